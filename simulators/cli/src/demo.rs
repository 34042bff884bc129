//! `mpn-sim demo-load`: the same load run against an engine started in this process
//! on an in-process Kafka-protocol broker (librdkafka's mock cluster), with one
//! generated credential per subscriber, each granted every institution of the traffic.

use std::future::Future;

use anyhow::Context as _;
use mpn_engine::auth::{Cost, hash_secret_with_cost};
use mpn_engine::config::CredentialConfig;
use mpn_engine::{Config, Engine, IngestStart};
use mpn_kafka::MockBroker;
use mpn_sim::subscriber::Login;
use mpn_sim::traffic::Generator;
use rand::Rng as _;

use crate::report::{Report, Written};
use crate::settings::{LoadOptions, Target};

/// Starts a broker and an engine, runs [`crate::load::run`] against them, stops both.
pub async fn run(
    opts: &LoadOptions,
    topic: &str,
    partitions: i32,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<(Report, Written)> {
    let broker = MockBroker::start(1).context("starting the in-process broker")?;
    let mut config = Config::default();
    config.kafka.bootstrap_servers = broker.bootstrap_servers().to_owned();
    config.kafka.input_topic = topic.to_owned();
    config.kafka.group_id = "mpn-sim-demo-load".into();
    broker.create_engine_topics(&config.kafka, partitions)?;
    config.grpc.listen = "127.0.0.1:0".parse()?;
    config.metrics.listen = String::new();

    // The institutions the traffic will name, all granted to every login.
    let codes: Vec<String> = Generator::new(opts.traffic())
        .institutions()
        .iter()
        .map(|i| i.code.clone())
        .collect();
    let mut logins = Vec::new();
    for k in 0..opts.subscribers.max(1) {
        let secret: String = {
            let mut rng = rand::rng();
            (0..24)
                .map(|_| char::from(rng.random_range(b'a'..=b'z')))
                .collect()
        };
        let institution = codes[k % codes.len()].clone();
        let login_id = format!("sim-billing-{k}");
        // The cheap hash: this engine lives only as long as the run.
        config.credentials.push(CredentialConfig {
            institution: institution.clone(),
            login_id: login_id.clone(),
            secret_hash: hash_secret_with_cost(&secret, Cost::Test).map_err(anyhow::Error::msg)?,
            grants: codes.clone(),
            certificate_names: vec![],
        });
        logins.push(Login {
            institution,
            login_id,
            secret,
        });
    }

    let engine = Engine::start(config.clone(), IngestStart::Manual)
        .await
        .context("starting the engine")?;
    engine.open_ingest();
    let target = Target {
        bootstrap: broker.bootstrap_servers().to_owned(),
        topic: topic.to_owned(),
        against: engine.grpc_addr().to_string(),
        logins,
    };
    let result = crate::load::run("demo-load", &target, opts, stop).await;
    engine.shutdown().await;
    drop(broker);
    result
}
