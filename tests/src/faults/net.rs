//! Network partitions as sets of cut links between nodes (Jepsen's "grudges"), pure;
//! [`Firewall`] turns them into iptables rules and removes them again.
//!
//! Every node binds its own loopback address for client, replication and controller
//! traffic, outgoing connections included, so dropping packets from one node's
//! address to another's cuts exactly that link. The harness's clients connect from
//! 127.0.0.1 and are never cut off.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{bail, Context};

/// Directed links `(from, to)` whose packets are dropped.
pub type Cuts = BTreeSet<(u64, u64)>;

/// Every link between a node of `a` and a node of `b`, both directions.
pub fn between(a: &[u64], b: &[u64]) -> Cuts {
    let mut cuts = Cuts::new();
    for x in a {
        for y in b {
            if x != y {
                cuts.insert((*x, *y));
                cuts.insert((*y, *x));
            }
        }
    }
    cuts
}

/// `node` cut off from every other node of `all`.
pub fn isolate(node: u64, all: &[u64]) -> Cuts {
    between(&[node], all)
}

/// `minority` and the rest of `all` cut off from each other.
pub fn halves(minority: &[u64], all: &[u64]) -> Cuts {
    let majority: Vec<u64> = all
        .iter()
        .copied()
        .filter(|n| !minority.contains(n))
        .collect();
    between(minority, &majority)
}

/// `order`'s first half and last half cut off from each other; the node in the middle
/// reaches both (with 3 nodes: the two ends cannot talk, the middle one talks to both).
pub fn bridge(order: &[u64]) -> Cuts {
    let middle = order.len() / 2;
    between(&order[..middle], &order[middle + 1..])
}

/// The nodes that can still reach a majority of `all` directly.
pub fn with_majority(cuts: &Cuts, all: &[u64]) -> Vec<u64> {
    all.iter()
        .copied()
        .filter(|n| {
            let reach = all
                .iter()
                .filter(|m| *m == n || !cuts.contains(&(*n, **m)))
                .count();
            reach * 2 > all.len()
        })
        .collect()
}

/// The cuts as `a-b` pairs (one per link, both directions folded), for reports.
pub fn describe(cuts: &Cuts) -> String {
    let links: BTreeSet<(u64, u64)> = cuts
        .iter()
        .map(|(a, b)| if a < b { (*a, *b) } else { (*b, *a) })
        .collect();
    links
        .iter()
        .map(|(a, b)| {
            let both = cuts.contains(&(*a, *b)) && cuts.contains(&(*b, *a));
            format!("{a}{}{b}", if both { "x" } else { ">" })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// iptables DROP rules on INPUT, each marked with this run's comment so that leftovers
/// of an interrupted run can be found and removed.
pub struct Firewall {
    comment: String,
    rules: Vec<(String, String)>,
}

impl Firewall {
    /// A firewall whose rules carry `comment`.
    pub fn new(comment: &str) -> Self {
        Firewall {
            comment: comment.to_string(),
            rules: Vec::new(),
        }
    }

    /// Drops packets from `from` to `to` (IP addresses).
    ///
    /// # Errors
    /// iptables is missing or refuses the rule.
    pub fn drop(&mut self, from: &str, to: &str) -> anyhow::Result<()> {
        iptables("-A", from, to, &self.comment)?;
        self.rules.push((from.to_string(), to.to_string()));
        Ok(())
    }

    /// Whether any rule is in place.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Removes every rule this firewall added, then any other rule with its comment.
    pub fn heal(&mut self) {
        for (from, to) in self.rules.drain(..) {
            if let Err(e) = iptables("-D", &from, &to, &self.comment) {
                tracing::warn!("cannot remove iptables rule {from} -> {to}: {e}");
            }
        }
        remove_rules_with_comment(&self.comment);
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.heal();
    }
}

fn iptables(op: &str, from: &str, to: &str, comment: &str) -> anyhow::Result<()> {
    let status = Command::new("iptables")
        .args([
            "-w",
            op,
            "INPUT",
            "-s",
            from,
            "-d",
            to,
            "-m",
            "comment",
            "--comment",
            comment,
            "-j",
            "DROP",
        ])
        .status()
        .context("running iptables (the partition nemesis needs root and the iptables package)")?;
    if !status.success() {
        bail!("iptables {op} {from} -> {to} failed with {status}");
    }
    Ok(())
}

/// Deletes every INPUT rule whose comment is exactly `comment` (leftovers of an
/// interrupted run, or rules added behind a [`Firewall`]'s back); returns how many.
pub fn remove_rules_with_comment(comment: &str) -> usize {
    let Ok(out) = Command::new("iptables")
        .args(["-w", "-S", "INPUT"])
        .output()
    else {
        return 0;
    };
    let listing = String::from_utf8_lossy(&out.stdout);
    let mut removed = 0;
    for line in listing.lines() {
        let Some(spec) = line.strip_prefix("-A INPUT ") else {
            continue;
        };
        let words: Vec<&str> = spec.split_whitespace().collect();
        let marked = words
            .windows(2)
            .any(|w| w[0] == "--comment" && w[1].trim_matches('"') == comment);
        if !marked {
            continue;
        }
        let args: Vec<String> = words
            .iter()
            .map(|w| w.trim_matches('"').to_string())
            .collect();
        let ok = Command::new("iptables")
            .args(["-w", "-D", "INPUT"])
            .args(&args)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL3: [u64; 3] = [1, 2, 3];
    const ALL5: [u64; 5] = [1, 2, 3, 4, 5];

    #[test]
    fn isolating_one_node_cuts_both_directions_to_every_other_node() {
        let cuts = isolate(2, &ALL3);
        assert_eq!(
            cuts.into_iter().collect::<Vec<_>>(),
            vec![(1, 2), (2, 1), (2, 3), (3, 2)]
        );
        assert_eq!(describe(&isolate(2, &ALL3)), "1x2 2x3");
        assert_eq!(with_majority(&isolate(2, &ALL3), &ALL3), vec![1, 3]);
    }

    #[test]
    fn halves_leave_only_the_majority_with_a_quorum() {
        let cuts = halves(&[4, 1], &ALL5);
        assert_eq!(cuts.len(), 2 * 2 * 3);
        assert!(!cuts.contains(&(1, 4)) && !cuts.contains(&(2, 3)));
        assert_eq!(with_majority(&cuts, &ALL5), vec![2, 3, 5]);
    }

    #[test]
    fn a_bridge_node_reaches_both_halves_that_cannot_reach_each_other() {
        let cuts = bridge(&[5, 1, 3, 2, 4]);
        // Halves {5, 1} and {2, 4}; 3 bridges.
        assert_eq!(cuts, between(&[5, 1], &[2, 4]));
        assert!(cuts.iter().all(|(a, b)| *a != 3 && *b != 3));
        // Two overlapping majorities, {5, 1, 3} and {3, 2, 4}: every node has one.
        assert_eq!(with_majority(&cuts, &ALL5), ALL5.to_vec());
        assert_eq!(bridge(&[3, 1, 2]), between(&[3], &[2]));
    }

    #[test]
    fn one_way_cuts_are_described_with_an_arrow() {
        let cuts: Cuts = [(1, 2)].into_iter().collect();
        assert_eq!(describe(&cuts), "1>2");
    }
}
