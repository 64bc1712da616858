//! The ApiVersions table: exactly the APIs and versions keel implements and tests.
//!
//! Each handler in `src/api/` declares its own `VERSIONS`; this table collects them.
//! A client picks min(its max, our max) per API, so advertising a version that is not
//! implemented breaks clients: add a row only with a test that exercises it.

use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::VersionRange;

use crate::api;

/// Every API keel serves, with the versions it serves.
pub const SUPPORTED_APIS: &[(ApiKey, VersionRange)] = &[
    (ApiKey::Produce, api::produce::VERSIONS),
    (ApiKey::Fetch, api::fetch::VERSIONS),
    (ApiKey::ListOffsets, api::list_offsets::VERSIONS),
    (ApiKey::Metadata, api::metadata::VERSIONS),
    (ApiKey::OffsetCommit, api::offset_commit::VERSIONS),
    (ApiKey::OffsetFetch, api::offset_fetch::VERSIONS),
    (ApiKey::FindCoordinator, api::find_coordinator::VERSIONS),
    (ApiKey::JoinGroup, api::join_group::VERSIONS),
    (ApiKey::Heartbeat, api::heartbeat::VERSIONS),
    (ApiKey::LeaveGroup, api::leave_group::VERSIONS),
    (ApiKey::SyncGroup, api::sync_group::VERSIONS),
    (ApiKey::DescribeGroups, api::describe_groups::VERSIONS),
    (ApiKey::ListGroups, api::list_groups::VERSIONS),
    (ApiKey::DeleteGroups, api::delete_groups::VERSIONS),
    (ApiKey::OffsetDelete, api::offset_delete::VERSIONS),
    (ApiKey::ApiVersions, api::api_versions::VERSIONS),
    (ApiKey::CreateTopics, api::topics::CREATE_TOPICS_VERSIONS),
    (ApiKey::DeleteTopics, api::topics::DELETE_TOPICS_VERSIONS),
    (ApiKey::DeleteRecords, api::delete_records::VERSIONS),
    (ApiKey::InitProducerId, api::init_producer_id::VERSIONS),
    (
        ApiKey::OffsetForLeaderEpoch,
        api::offset_for_leader_epoch::VERSIONS,
    ),
    (
        ApiKey::DescribeConfigs,
        api::configs::DESCRIBE_CONFIGS_VERSIONS,
    ),
    (ApiKey::AlterConfigs, api::configs::ALTER_CONFIGS_VERSIONS),
    (
        ApiKey::CreatePartitions,
        api::topics::CREATE_PARTITIONS_VERSIONS,
    ),
    (
        ApiKey::IncrementalAlterConfigs,
        api::configs::INCREMENTAL_ALTER_CONFIGS_VERSIONS,
    ),
    (ApiKey::DescribeQuorum, api::describe_quorum::VERSIONS),
    (ApiKey::DescribeCluster, api::describe_cluster::VERSIONS),
    (ApiKey::ElectLeaders, api::elect_leaders::VERSIONS),
    (
        ApiKey::AlterPartitionReassignments,
        api::reassignments::ALTER_VERSIONS,
    ),
    (
        ApiKey::ListPartitionReassignments,
        api::reassignments::LIST_VERSIONS,
    ),
];

/// The versions keel serves for `key`, or `None` if it does not serve the API.
pub fn supported(key: ApiKey) -> Option<VersionRange> {
    SUPPORTED_APIS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, r)| *r)
}

/// Whether `version` of `key` is served.
pub fn is_supported(key: ApiKey, version: i16) -> bool {
    supported(key).is_some_and(|r| r.min <= version && version <= r.max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_advertised_version_is_one_the_codec_can_decode() {
        for (key, ours) in SUPPORTED_APIS {
            let mut codec = key.valid_versions();
            if *key == ApiKey::Produce {
                // v0-v2 are adapted by api::produce_legacy.
                codec.min = 0;
            }
            assert!(
                codec.min <= ours.min && ours.max <= codec.max && ours.min <= ours.max,
                "{key:?}: advertised {ours} outside the codec's {codec}"
            );
        }
    }

    #[test]
    fn no_api_is_listed_twice() {
        for (i, (a, _)) in SUPPORTED_APIS.iter().enumerate() {
            assert!(
                SUPPORTED_APIS[i + 1..].iter().all(|(b, _)| a != b),
                "{a:?} twice"
            );
        }
    }
}
