//! Shared test harness: a real Tansu broker (Kafka wire protocol, SQLite storage) per test, on a free loopback
//! port in its own temp dir, stopped by PID when the handle drops (also when the test panics).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

pub const SETUP_HINT: &str =
    "run `scripts/setup.sh` (it builds the Tansu broker with cargo install, ~20 min once)";

/// Where the set-up script installs Tansu; `SAILSTREAM_TANSU` overrides.
pub fn tansu_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SAILSTREAM_TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    Path::new(&home).join(".local/tansu/bin/tansu")
}

/// The `sailstream` binary as a user runs it from the repository root, without the caller's `SAILSTREAM*` and
/// `RUST_LOG` settings, so that a developer's environment cannot change what a test sees.
pub fn sailstream() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sailstream"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SAILSTREAM") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

/// `sailstream demo` over the sample dumps with everything it writes under `state` (store, offline log,
/// exports), no metrics listener and the lookup API on a free port; the caller adds the rest and runs it.
pub fn demo_in(state: &Path) -> Command {
    let mut c = sailstream();
    c.args(["demo", "--events", "pipelines/sample"])
        .env("SAILSTREAM__STORE__PATH", state.join("store"))
        .env("SAILSTREAM__OFFLINE_LOG__PATH", state.join("log"))
        .env("SAILSTREAM__JOBS__OUTPUT_DIR", state.join("exports"))
        .env("SAILSTREAM__METRICS__ENABLED", "false")
        .env(
            "SAILSTREAM__SERVE__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        );
    c
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral loopback port")
        .local_addr()
        .unwrap()
        .port()
}

pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker; panics with the set-up command if the binary is missing (never skips).
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temp dir for the broker");
        let port = free_port();
        let mut broker = Broker {
            child: None,
            port,
            dir,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let bin = tansu_binary();
        assert!(
            bin.exists(),
            "Tansu broker binary not found at {}: {SETUP_HINT}",
            bin.display()
        );
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .unwrap();
        let child = Command::new(&bin)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .env_remove("STORAGE_ENGINE")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("broker exited early ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "broker did not open port {} in 20 s; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Stops the broker process (data stays in its directory).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub async fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("admin client");
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        let results = admin
            .create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create_topics request");
        for r in results {
            r.unwrap_or_else(|(topic, code)| panic!("creating topic {topic}: {code:?}"));
        }
    }

    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .create()
            .expect("producer")
    }

    /// Produces (key, payload) pairs and waits for every acknowledgement: to `partition`, or where the
    /// producer's partitioner puts each key when it is None.
    pub async fn produce(
        &self,
        producer: &FutureProducer,
        topic: &str,
        partition: Option<i32>,
        records: &[(String, Vec<u8>)],
    ) {
        let mut pending = Vec::new();
        for (key, payload) in records {
            let mut record = FutureRecord::to(topic).key(key).payload(payload);
            record.partition = partition;
            pending.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("enqueue"),
            );
        }
        for d in pending {
            d.await
                .expect("delivery")
                .map_err(|(e, _)| e)
                .expect("acknowledged");
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kafka client settings for sailstream's own config pointing at this broker.
pub fn config_for(broker: &Broker, group: &str, store: &Path) -> sailstream::Config {
    let mut c = sailstream::Config::default();
    c.kafka.brokers = broker.bootstrap();
    c.kafka.group_id = group.to_string();
    c.store.path = store.to_path_buf();
    c.offline_log.path = store.with_extension("log");
    c.ingest.batch_size = 500;
    c.ingest.linger_ms = 50;
    c.validate().expect("test config valid");
    c
}

/// Every record batch of the Parquet files directly in `dir`, in file-name order. With `strict`, any other
/// file in `dir` fails the test (a stray temp file in the offline log would be a bug).
pub fn read_parquet_dir(dir: &Path, strict: bool) -> Vec<arrow::array::RecordBatch> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|f| f.unwrap().path())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        if path.extension().is_none_or(|x| x != "parquet") {
            assert!(!strict, "stray file: {}", path.display());
            continue;
        }
        let file = std::fs::File::open(&path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        out.extend(reader.map(|b| b.unwrap()));
    }
    out
}

/// A named Utf8 column of a batch read back from Parquet (panics, naming it, when absent or not Utf8).
pub fn strings(batch: &arrow::array::RecordBatch, name: &str) -> arrow::array::StringArray {
    use arrow::array::AsArray;
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_string::<i32>()
        .clone()
}

/// A named primitive column (e.g. `Int64Type`) of a batch read back from Parquet.
pub fn primitives<T: arrow::datatypes::ArrowPrimitiveType>(
    batch: &arrow::array::RecordBatch,
    name: &str,
) -> arrow::array::PrimitiveArray<T> {
    use arrow::array::AsArray;
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_primitive::<T>()
        .clone()
}

/// A model folder at `dest/model` with the default sail-lite model's files and its manifest passed through
/// `edit` (tests of manifest checks and model-version upgrades).
pub fn edited_model(dest: &Path, edit: impl Fn(&str) -> String) -> PathBuf {
    let src = sailstream::embed::model_dir(&sailstream::Config::default());
    let out = dest.join("model");
    std::fs::create_dir_all(&out).unwrap();
    for name in ["model.onnx", "tokenizer.json"] {
        std::os::unix::fs::symlink(src.join(name), out.join(name)).unwrap();
    }
    let manifest = std::fs::read_to_string(src.join("manifest.toml"))
        .unwrap_or_else(|e| panic!("sail-lite manifest ({e}); run scripts/setup.sh"));
    std::fs::write(out.join("manifest.toml"), edit(&manifest)).unwrap();
    out
}
