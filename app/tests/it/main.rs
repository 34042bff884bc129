//! Integration tests of the engine on the in-process mock broker. One binary, one
//! module per capability; `support` starts brokers, engines and subscribers.

mod auth;
mod binary;
mod cafis;
mod chaos;
mod console;
mod dead_letters;
mod delivery;
mod demo;
mod durable;
mod fanout;
mod limits;
mod metrics_export;
mod operations;
mod partitions;
mod python_client;
mod rebalance;
mod recovery;
mod replicas;
mod restart;
mod security;
mod sessions;
mod support;
mod tansu;
mod tansu_support;
