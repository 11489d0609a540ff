//! sailstream: item content and user behaviour turned into the features a recommender needs, in real time.
//!
//! Modules follow the data flow: [`ingest`] reads events (Kafka or files) and folds them into the online
//! [`store`] (RocksDB) under the contracts in [`schema`]; [`embed`] turns items into vectors with an ONNX model
//! (located by [`runtime`]); [`jobs`] build teacher targets, interests and semantic IDs on DataFusion; [`serve`]
//! answers rankers' lookups over HTTP; [`eval`] judges the embeddings with the paper's offline metrics.
//! [`config`] layers settings, [`error`] says whose fault a failure is, [`metrics`] names what is measured.

pub mod cache;
pub mod config;
pub mod embed;
pub mod error;
pub mod eval;
pub mod ingest;
pub mod jobs;
pub mod metrics;
pub mod runtime;
pub mod schema;
pub mod serve;
pub mod store;

pub use config::Config;
pub use error::{Error, Fault, Result};
