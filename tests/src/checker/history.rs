//! The operation history a fault run records, and its JSON-lines file format.
//!
//! Modeled on Jepsen: every client operation is written as an `invoke` event when
//! it starts and as exactly one completion (`ok`, `fail` or `info`) when it ends.
//! `info` means the outcome is unknown (timeout, lost connection): the operation
//! may or may not have taken effect. A consumer process (one client worker) runs one
//! operation at a time; a producer process may have many sends in flight (librdkafka
//! pipelines them), each its own operation, told apart by its unique value. Events
//! appear in the file in the order they happened.
//!
//! One event per line, a JSON object with these fields:
//!
//! | field       | type   | meaning                                                        |
//! |-------------|--------|----------------------------------------------------------------|
//! | `process`   | u64    | the client worker that ran the operation                       |
//! | `type`      | string | `"invoke"`, `"ok"`, `"fail"` or `"info"`                       |
//! | `f`         | string | `"send"`, `"poll"`, `"assign"`, `"revoke"`, `"commit"`, `"nemesis"` |
//! | `time_ns`   | u64    | monotonic nanoseconds since the run started                    |
//! | `value`     | any    | depends on `f`, below                                          |
//! | `final_read`| bool   | polls only: `true` for the final phase (absent means `false`)  |
//!
//! Values by `f`:
//!
//! - `send`: `{"topic": "t", "partition": 0, "value": 17}` on every event of the
//!   operation; the `ok` completion adds `"offset": 5`, the offset the broker
//!   acknowledged, or `-1` when the acknowledgement named none (librdkafka acks a
//!   batch implicitly when a later batch of the same idempotent producer succeeds
//!   after it timed out). Values are unique across the whole run.
//! - `poll`: the `ok` completion carries the records returned, in the order the
//!   client returned them: `[{"topic": "t", "partition": 0, "offset": 5, "value": 17}]`.
//!   `invoke`, `fail` and `info` carry `null` (or `[]`).
//! - `assign`: a consumer's assignment changed or it seeked. Recorded as one `ok`
//!   event: `{"partitions": [{"topic": "t", "partition": 0, "offset": 0}]}` where
//!   `offset` is the next offset the consumer will read, or `-1` when unknown.
//!   Only the listed partitions' position expectations are reset. A consumer group's
//!   rebalance handing partitions to a member adds `"group": "g"`: the member starts
//!   at the group's committed offset (the log start when none), offsets are `-1`.
//! - `revoke`: a rebalance took partitions away from a group member, one `ok` event
//!   `{"group": "g", "partitions": [{"topic": "t", "partition": 0, "offset": -1}]}`.
//! - `commit`: a group member commits its positions, `invoke` then `ok`, `fail` or
//!   `info`, each `{"group": "g", "partitions": [{"topic": "t", "partition": 0,
//!   "offset": 12}]}` (`offset`: the next offset to read).
//!
//! - `nemesis`: a fault starting or healing, recorded by process 0 as one `info`
//!   event: `{"action": "start", "fault": "kill", "detail": "kill -9 node 2"}`, then
//!   `{"action": "heal", "fault": "kill", "detail": "restarted node 2"}`. Faults do not
//!   overlap: every `start` is followed by its `heal` before the next `start`.
//!
//! The final phase assigns every partition with offset 0 (or -1 when the log
//! start may have moved) and polls to the end with `"final_read": true`.

use serde_json::{json, Map, Value};

/// A completed or started operation's event type, as in Jepsen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The operation started.
    Invoke,
    /// The operation definitely took effect.
    Ok,
    /// The operation definitely did not take effect.
    Fail,
    /// The outcome is unknown: it may or may not have taken effect.
    Info,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Invoke => "invoke",
            EventType::Ok => "ok",
            EventType::Fail => "fail",
            EventType::Info => "info",
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "invoke" => Ok(EventType::Invoke),
            "ok" => Ok(EventType::Ok),
            "fail" => Ok(EventType::Fail),
            "info" => Ok(EventType::Info),
            other => Err(format!("unknown type {other:?}")),
        }
    }
}

/// One record at a topic-partition offset, as a poll returned it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Record {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Offset of the record in the partition.
    pub offset: i64,
    /// The unique value the producer sent.
    pub value: u64,
}

impl Record {
    /// A record of `value` at `topic`/`partition`@`offset`.
    pub fn new(topic: &str, partition: i32, offset: i64, value: u64) -> Self {
        Record {
            topic: topic.to_string(),
            partition,
            offset,
            value,
        }
    }
}

/// A send of one unique value to one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOp {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// The unique value sent.
    pub value: u64,
    /// The acknowledged offset: present exactly on `ok` completions.
    pub offset: Option<i64>,
}

/// One partition in an `assign` event, with the consumer's next offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedPartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// The next offset the consumer will read, or -1 when unknown.
    pub offset: i64,
}

impl AssignedPartition {
    /// `topic`/`partition` positioned at `offset` (-1: unknown).
    pub fn new(topic: &str, partition: i32, offset: i64) -> Self {
        AssignedPartition {
            topic: topic.to_string(),
            partition,
            offset,
        }
    }
}

/// What an event's operation was, with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Produce one value.
    Send(SendOp),
    /// Consume: the records returned (empty unless the event is `ok`).
    Poll {
        /// Records in the order the client returned them.
        records: Vec<Record>,
        /// Part of the final phase that reads every partition to the end.
        final_read: bool,
    },
    /// The consumer's assignment changed or it seeked.
    Assign {
        /// The partitions whose position was (re)set.
        partitions: Vec<AssignedPartition>,
        /// Set when a group rebalance assigned them: positions are the group's
        /// committed offsets.
        group: Option<String>,
    },
    /// A group rebalance took partitions away from the consumer.
    Revoke {
        /// The group.
        group: String,
        /// The partitions revoked (offsets -1).
        partitions: Vec<AssignedPartition>,
    },
    /// A group member commits the next offsets to read.
    Commit {
        /// The group.
        group: String,
        /// The partitions and committed offsets.
        partitions: Vec<AssignedPartition>,
    },
    /// A fault started or healed.
    Nemesis {
        /// Start or heal.
        action: NemesisAction,
        /// The fault's name (`kill`, `pause`, `partition`, …).
        fault: String,
        /// What exactly was done, for people reading the history.
        detail: String,
    },
}

/// Whether a nemesis event starts or heals a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NemesisAction {
    /// The fault begins.
    Start,
    /// The fault is over (processes restarted or resumed, rules removed).
    Heal,
}

impl NemesisAction {
    fn as_str(self) -> &'static str {
        match self {
            NemesisAction::Start => "start",
            NemesisAction::Heal => "heal",
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "start" => Ok(NemesisAction::Start),
            "heal" => Ok(NemesisAction::Heal),
            other => Err(format!("unknown nemesis action {other:?}")),
        }
    }
}

/// The process id nemesis events carry; client workers use other ids.
pub const NEMESIS_PROCESS: u64 = 0;

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The client worker.
    pub process: u64,
    /// invoke / ok / fail / info.
    pub event_type: EventType,
    /// Monotonic nanoseconds since the run started.
    pub time_ns: u64,
    /// The operation and its value.
    pub op: Op,
}

impl Event {
    fn send(
        process: u64,
        time_ns: u64,
        event_type: EventType,
        (topic, partition): (&str, i32),
        value: u64,
        offset: Option<i64>,
    ) -> Self {
        Event {
            process,
            event_type,
            time_ns,
            op: Op::Send(SendOp {
                topic: topic.to_string(),
                partition,
                value,
                offset,
            }),
        }
    }

    /// A send of `value` to `topic`/`partition` starting.
    pub fn send_invoke(
        process: u64,
        time_ns: u64,
        topic: &str,
        partition: i32,
        value: u64,
    ) -> Self {
        Self::send(
            process,
            time_ns,
            EventType::Invoke,
            (topic, partition),
            value,
            None,
        )
    }

    /// A send acknowledged at `offset`.
    pub fn send_ok(
        process: u64,
        time_ns: u64,
        topic: &str,
        partition: i32,
        value: u64,
        offset: i64,
    ) -> Self {
        Self::send(
            process,
            time_ns,
            EventType::Ok,
            (topic, partition),
            value,
            Some(offset),
        )
    }

    /// A send that definitely failed.
    pub fn send_fail(process: u64, time_ns: u64, topic: &str, partition: i32, value: u64) -> Self {
        Self::send(
            process,
            time_ns,
            EventType::Fail,
            (topic, partition),
            value,
            None,
        )
    }

    /// A send whose outcome is unknown.
    pub fn send_info(process: u64, time_ns: u64, topic: &str, partition: i32, value: u64) -> Self {
        Self::send(
            process,
            time_ns,
            EventType::Info,
            (topic, partition),
            value,
            None,
        )
    }

    /// A poll starting.
    pub fn poll_invoke(process: u64, time_ns: u64, final_read: bool) -> Self {
        Event {
            process,
            event_type: EventType::Invoke,
            time_ns,
            op: Op::Poll {
                records: Vec::new(),
                final_read,
            },
        }
    }

    /// A poll that returned `records`.
    pub fn poll_ok(process: u64, time_ns: u64, records: Vec<Record>, final_read: bool) -> Self {
        Event {
            process,
            event_type: EventType::Ok,
            time_ns,
            op: Op::Poll {
                records,
                final_read,
            },
        }
    }

    /// An assignment change or seek of `partitions`.
    pub fn assign(process: u64, time_ns: u64, partitions: Vec<AssignedPartition>) -> Self {
        Event {
            process,
            event_type: EventType::Ok,
            time_ns,
            op: Op::Assign {
                partitions,
                group: None,
            },
        }
    }

    /// A rebalance of `group` assigning `partitions` (at their committed offsets).
    pub fn group_assign(
        process: u64,
        time_ns: u64,
        group: &str,
        partitions: Vec<AssignedPartition>,
    ) -> Self {
        Event {
            process,
            event_type: EventType::Ok,
            time_ns,
            op: Op::Assign {
                partitions,
                group: Some(group.to_string()),
            },
        }
    }

    /// A rebalance of `group` revoking `partitions`.
    pub fn revoke(
        process: u64,
        time_ns: u64,
        group: &str,
        partitions: Vec<AssignedPartition>,
    ) -> Self {
        Event {
            process,
            event_type: EventType::Ok,
            time_ns,
            op: Op::Revoke {
                group: group.to_string(),
                partitions,
            },
        }
    }

    /// An offset commit event (`invoke`, or its completion) of `group`.
    pub fn commit(
        process: u64,
        time_ns: u64,
        event_type: EventType,
        group: &str,
        partitions: Vec<AssignedPartition>,
    ) -> Self {
        Event {
            process,
            event_type,
            time_ns,
            op: Op::Commit {
                group: group.to_string(),
                partitions,
            },
        }
    }

    /// A fault starting (`Start`) or healing (`Heal`), by the nemesis process.
    pub fn nemesis(time_ns: u64, action: NemesisAction, fault: &str, detail: &str) -> Self {
        Event {
            process: NEMESIS_PROCESS,
            event_type: EventType::Info,
            time_ns,
            op: Op::Nemesis {
                action,
                fault: fault.to_string(),
                detail: detail.to_string(),
            },
        }
    }

    /// The event as one JSON object (one history line).
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("process".into(), json!(self.process));
        obj.insert("type".into(), json!(self.event_type.as_str()));
        obj.insert("time_ns".into(), json!(self.time_ns));
        match &self.op {
            Op::Send(s) => {
                obj.insert("f".into(), json!("send"));
                let mut v = json!({"topic": s.topic, "partition": s.partition, "value": s.value});
                if let (Some(offset), Some(m)) = (s.offset, v.as_object_mut()) {
                    m.insert("offset".into(), json!(offset));
                }
                obj.insert("value".into(), v);
            }
            Op::Poll {
                records,
                final_read,
            } => {
                obj.insert("f".into(), json!("poll"));
                let value = if self.event_type == EventType::Ok {
                    Value::Array(records.iter().map(record_json).collect())
                } else {
                    Value::Null
                };
                obj.insert("value".into(), value);
                if *final_read {
                    obj.insert("final_read".into(), json!(true));
                }
            }
            Op::Assign { partitions, group } => {
                obj.insert("f".into(), json!("assign"));
                let mut v = json!({ "partitions": partitions_json(partitions) });
                if let (Some(g), Some(m)) = (group, v.as_object_mut()) {
                    m.insert("group".into(), json!(g));
                }
                obj.insert("value".into(), v);
            }
            Op::Revoke { group, partitions } => {
                obj.insert("f".into(), json!("revoke"));
                obj.insert(
                    "value".into(),
                    json!({"group": group, "partitions": partitions_json(partitions)}),
                );
            }
            Op::Commit { group, partitions } => {
                obj.insert("f".into(), json!("commit"));
                obj.insert(
                    "value".into(),
                    json!({"group": group, "partitions": partitions_json(partitions)}),
                );
            }
            Op::Nemesis {
                action,
                fault,
                detail,
            } => {
                obj.insert("f".into(), json!("nemesis"));
                obj.insert(
                    "value".into(),
                    json!({"action": action.as_str(), "fault": fault, "detail": detail}),
                );
            }
        }
        Value::Object(obj)
    }

    /// Parses one history line's JSON object.
    ///
    /// # Errors
    /// A message naming the missing or malformed field.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let process = get_u64(v, "process")?;
        let event_type = EventType::parse(get_str(v, "type")?)?;
        let time_ns = get_u64(v, "time_ns")?;
        let value = v.get("value").unwrap_or(&Value::Null);
        let op = match get_str(v, "f")? {
            "send" => {
                let offset = match value.get("offset") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(get_i64(value, "offset")?),
                };
                if event_type == EventType::Ok && offset.is_none() {
                    return Err("send ok without an offset".into());
                }
                Op::Send(SendOp {
                    topic: get_str(value, "topic")?.to_string(),
                    partition: get_i32(value, "partition")?,
                    value: get_u64(value, "value")?,
                    offset,
                })
            }
            "poll" => {
                let final_read = match v.get("final_read") {
                    None | Some(Value::Null) => false,
                    Some(b) => b.as_bool().ok_or("final_read is not a bool")?,
                };
                let records = match value {
                    Value::Null => Vec::new(),
                    Value::Array(items) => {
                        items.iter().map(parse_record).collect::<Result<_, _>>()?
                    }
                    _ => return Err("poll value is not a list".into()),
                };
                Op::Poll {
                    records,
                    final_read,
                }
            }
            "assign" => Op::Assign {
                partitions: parse_partitions(value)?,
                group: match value.get("group") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(get_str(value, "group")?.to_string()),
                },
            },
            "revoke" => Op::Revoke {
                group: get_str(value, "group")?.to_string(),
                partitions: parse_partitions(value)?,
            },
            "commit" => Op::Commit {
                group: get_str(value, "group")?.to_string(),
                partitions: parse_partitions(value)?,
            },
            "nemesis" => Op::Nemesis {
                action: NemesisAction::parse(get_str(value, "action")?)?,
                fault: get_str(value, "fault")?.to_string(),
                detail: value
                    .get("detail")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            },
            other => return Err(format!("unknown f {other:?}")),
        };
        Ok(Event {
            process,
            event_type,
            time_ns,
            op,
        })
    }
}

fn partitions_json(partitions: &[AssignedPartition]) -> Vec<Value> {
    partitions
        .iter()
        .map(|p| json!({"topic": p.topic, "partition": p.partition, "offset": p.offset}))
        .collect()
}

fn parse_partitions(value: &Value) -> Result<Vec<AssignedPartition>, String> {
    value
        .get("partitions")
        .and_then(Value::as_array)
        .ok_or("value has no partitions list")?
        .iter()
        .map(|p| {
            Ok(AssignedPartition {
                topic: get_str(p, "topic")?.to_string(),
                partition: get_i32(p, "partition")?,
                offset: get_i64(p, "offset")?,
            })
        })
        .collect()
}

fn record_json(r: &Record) -> Value {
    json!({"topic": r.topic, "partition": r.partition, "offset": r.offset, "value": r.value})
}

fn parse_record(v: &Value) -> Result<Record, String> {
    Ok(Record {
        topic: get_str(v, "topic")?.to_string(),
        partition: get_i32(v, "partition")?,
        offset: get_i64(v, "offset")?,
        value: get_u64(v, "value")?,
    })
}

fn get_str<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing or non-string field {key:?}"))
}

fn get_u64(v: &Value, key: &str) -> Result<u64, String> {
    v.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("missing or non-u64 field {key:?}"))
}

fn get_i64(v: &Value, key: &str) -> Result<i64, String> {
    v.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("missing or non-integer field {key:?}"))
}

fn get_i32(v: &Value, key: &str) -> Result<i32, String> {
    get_i64(v, key)?
        .try_into()
        .map_err(|_| format!("field {key:?} out of i32 range"))
}

/// A run's events, in the order they happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Events in recording order.
    pub events: Vec<Event>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one event.
    pub fn push(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Parses a JSON-lines history; blank lines are skipped.
    ///
    /// # Errors
    /// The first malformed line, by 1-based line number, and what is wrong with it.
    pub fn parse_jsonl(text: &str) -> Result<History, String> {
        let mut events = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: Value =
                serde_json::from_str(line).map_err(|e| format!("line {}: {e}", index + 1))?;
            events.push(Event::from_json(&value).map_err(|e| format!("line {}: {e}", index + 1))?);
        }
        Ok(History { events })
    }

    /// The history as JSON lines, one event per line, each line ending in `\n`.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for event in &self.events {
            out.push_str(&event.to_json().to_string());
            out.push('\n');
        }
        out
    }
}
