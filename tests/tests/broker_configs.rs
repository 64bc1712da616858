//! Dynamic broker configs against a real keel node, by hand over the wire. What Kafka
//! refuses in a broker-config change keel refuses with the same code, and nothing of
//! a refused change is stored: a value that fails the check of the topic config it is
//! a synonym of, a static-only key, a per-broker resource naming another broker, a null
//! value in the legacy API. What is accepted takes effect: a cluster-wide
//! `log.retention.ms` becomes the `retention.ms` of a topic without an override.

use kafka_protocol::messages::alter_configs_request::{
    AlterConfigsResource as LegacyResource, AlterableConfig as LegacyConfig,
};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResourceResult;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, CreateTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use keel::cli::client::KafkaClient;
use keel_tests::clients::block_on;
use keel_tests::KeelNode;

const NONE: i16 = 0;
const INVALID_REQUEST: i16 = 42;
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const OP_SET: i8 = 0;
const OP_APPEND: i8 = 2;
/// Kafka's `ConfigSource` of a dynamic cluster-wide broker default.
const SOURCE_DYNAMIC_DEFAULT_BROKER: i8 = 3;
/// Kafka's `ConfigSource` of a built-in default.
const SOURCE_DEFAULT: i8 = 5;
/// The node id `KeelNode::start` gives a single node.
const NODE_ID: &str = "1";
const INCREMENTAL_VERSION: i16 = 1;
const LEGACY_VERSION: i16 = 1;
const DESCRIBE_VERSION: i16 = 4;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// One IncrementalAlterConfigs resource; returns its error code and message.
async fn alter(
    c: &mut KafkaClient,
    resource_type: i8,
    name: &str,
    ops: &[(i8, &str, &str)],
) -> (i16, String) {
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(s(name))
            .with_configs(
                ops.iter()
                    .map(|(op, k, v)| {
                        AlterableConfig::default()
                            .with_config_operation(*op)
                            .with_name(s(k))
                            .with_value(Some(s(v)))
                    })
                    .collect(),
            ),
    ]);
    let resp = c.call(&req, INCREMENTAL_VERSION).await.unwrap();
    assert_eq!(resp.responses.len(), 1, "{resp:?}");
    let r = &resp.responses[0];
    (
        r.error_code,
        r.error_message
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
    )
}

/// One legacy AlterConfigs resource; `None` values are sent as null.
async fn legacy_alter(c: &mut KafkaClient, name: &str, entries: &[(&str, Option<&str>)]) -> i16 {
    let req = AlterConfigsRequest::default().with_resources(vec![LegacyResource::default()
        .with_resource_type(RESOURCE_BROKER)
        .with_resource_name(s(name))
        .with_configs(
            entries
                .iter()
                .map(|(k, v)| LegacyConfig::default().with_name(s(k)).with_value(v.map(s)))
                .collect(),
        )]);
    let resp = c.call(&req, LEGACY_VERSION).await.unwrap();
    assert_eq!(resp.responses.len(), 1, "{resp:?}");
    resp.responses[0].error_code
}

async fn describe(
    c: &mut KafkaClient,
    resource_type: i8,
    name: &str,
    key: &str,
) -> DescribeConfigsResourceResult {
    let req =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(s(name))
            .with_configuration_keys(Some(vec![s(key)]))]);
    let resp = c.call(&req, DESCRIBE_VERSION).await.unwrap();
    assert_eq!(resp.results.len(), 1, "{resp:?}");
    assert_eq!(resp.results[0].error_code, NONE, "{resp:?}");
    let configs = &resp.results[0].configs;
    assert_eq!(configs.len(), 1, "{name}/{key}: {resp:?}");
    configs[0].clone()
}

/// The broker's `log.retention.ms` as (value, source).
async fn broker_retention(c: &mut KafkaClient) -> (String, i8) {
    let r = describe(c, RESOURCE_BROKER, NODE_ID, "log.retention.ms").await;
    (
        r.value.map(|v| v.to_string()).unwrap_or_default(),
        r.config_source,
    )
}

#[test]
fn broker_config_changes_are_checked_like_kafka_and_take_effect() {
    let tmp = tempfile::tempdir().unwrap();
    let node = KeelNode::start_in(tmp.path(), &[]).unwrap();
    block_on(async {
        let mut c = KafkaClient::connect(&node.addr, "broker-configs")
            .await
            .unwrap();
        let built_in = broker_retention(&mut c).await;
        assert_eq!(built_in.1, SOURCE_DEFAULT, "{built_in:?}");
        // What can change at run time is what DescribeConfigs calls not read-only.
        for (key, read_only) in [
            ("log.retention.ms", false),
            ("min.insync.replicas", false),
            ("message.max.bytes", false),
            ("node.id", true),
            ("log.flush.policy", true),
        ] {
            let r = describe(&mut c, RESOURCE_BROKER, NODE_ID, key).await;
            assert_eq!(r.read_only, read_only, "{key}");
        }

        // A value the synonym's topic config refuses, cluster-wide and per broker.
        for target in ["", NODE_ID] {
            let (code, message) = alter(
                &mut c,
                RESOURCE_BROKER,
                target,
                &[(OP_SET, "log.retention.ms", "a week")],
            )
            .await;
            assert_eq!(code, INVALID_REQUEST, "broker '{target}': {message}");
            assert!(message.contains("log.retention.ms"), "{message}");
        }
        let (code, message) = alter(
            &mut c,
            RESOURCE_BROKER,
            "",
            &[(OP_SET, "log.segment.bytes", "5")],
        )
        .await;
        assert_eq!(code, INVALID_REQUEST, "{message}");
        // A list value built by Append is checked too (by the controller).
        let (code, message) = alter(
            &mut c,
            RESOURCE_BROKER,
            "",
            &[(OP_APPEND, "log.cleanup.policy", "shred")],
        )
        .await;
        assert_eq!(code, INVALID_REQUEST, "{message}");

        // Keys keel reads only at start-up.
        let (code, message) = alter(
            &mut c,
            RESOURCE_BROKER,
            NODE_ID,
            &[
                (OP_SET, "node.id", "7"),
                (OP_SET, "log.retention.ms", "3600000"),
            ],
        )
        .await;
        assert_eq!(code, INVALID_REQUEST, "{message}");
        assert!(
            message.contains("dynamically") && message.contains("node.id"),
            "{message}"
        );

        // A per-broker resource must name the broker it is sent to.
        let (code, message) = alter(
            &mut c,
            RESOURCE_BROKER,
            "5",
            &[(OP_SET, "log.retention.ms", "3600000")],
        )
        .await;
        assert_eq!(code, INVALID_REQUEST, "{message}");
        assert!(message.contains("broker id"), "{message}");

        // The legacy API: a null value, and a bad value.
        assert_eq!(
            legacy_alter(&mut c, NODE_ID, &[("log.retention.ms", None)]).await,
            INVALID_REQUEST
        );
        assert_eq!(
            legacy_alter(&mut c, NODE_ID, &[("log.retention.ms", Some("-7"))]).await,
            INVALID_REQUEST
        );

        assert_eq!(
            broker_retention(&mut c).await,
            built_in,
            "a refused change was stored"
        );

        // Accepted: a name keel does not know (kept, as Kafka keeps plugin configs) and
        // a cluster-wide default that topics without an override pick up.
        let (code, message) = alter(
            &mut c,
            RESOURCE_BROKER,
            NODE_ID,
            &[(OP_SET, "sasl.kerberos.min.time.before.relogin", "58000")],
        )
        .await;
        assert_eq!(code, NONE, "{message}");
        let (code, message) = alter(
            &mut c,
            RESOURCE_BROKER,
            "",
            &[(OP_SET, "log.retention.ms", "3600000")],
        )
        .await;
        assert_eq!(code, NONE, "{message}");
        assert_eq!(
            broker_retention(&mut c).await,
            ("3600000".to_string(), SOURCE_DYNAMIC_DEFAULT_BROKER)
        );
        let create = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(s("inherits")))
                .with_num_partitions(1)
                .with_replication_factor(1)])
            .with_timeout_ms(30_000);
        let resp = c.call(&create, 5).await.unwrap();
        assert_eq!(resp.topics[0].error_code, NONE, "{resp:?}");
        let topic = describe(&mut c, RESOURCE_TOPIC, "inherits", "retention.ms").await;
        assert_eq!(
            (topic.value.map(|v| v.to_string()), topic.config_source),
            (Some("3600000".to_string()), SOURCE_DYNAMIC_DEFAULT_BROKER)
        );
    });
}
