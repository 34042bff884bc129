//! A real Kafka-protocol broker over TCP for tests: Tansu, started on a loopback port
//! the OS picks. `scripts/test` installs it and sets `MPN_TANSU`; without it these
//! tests fail with a message saying how to get it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Tansu keeps its data.
#[derive(Debug, Clone)]
pub(crate) enum Storage {
    /// In memory: fastest; lost when the broker stops.
    Memory,
    /// SQLite file in this directory: survives kill -9 and restart.
    Sqlite(PathBuf),
}

#[derive(Debug)]
pub(crate) struct Tansu {
    child: Option<Child>,
    port: u16,
    storage: Storage,
}

fn binary() -> String {
    std::env::var("MPN_TANSU").unwrap_or_else(|_| "tansu".into())
}

impl Tansu {
    pub(crate) fn start(storage: Storage) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut t = Self {
            child: None,
            port,
            storage,
        };
        t.spawn();
        t
    }

    pub(crate) fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // Tansu resolves a sqlite path against its working directory.
        let (storage, cwd) = match &self.storage {
            Storage::Memory => ("memory://tansu/".to_owned(), std::env::temp_dir()),
            Storage::Sqlite(dir) => ("sqlite://tansu.db".to_owned(), dir.clone()),
        };
        let mut command = Command::new(binary());
        // SAFETY: see `die_with_parent`. A broker must not outlive a killed test.
        #[allow(unsafe_code)]
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(
                &mut command,
                crate::binary::die_with_parent,
            );
        }
        let child = command
            .current_dir(cwd)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", &storage])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start Tansu ({}): {e}; run scripts/test, which installs it, or set MPN_TANSU", binary())
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Tansu did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Storage::Sqlite(dir) = &self.storage {
            index_headers(&dir.join("tansu.db"));
        }
    }

    /// SIGKILL, as a crashed broker.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and storage.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub(crate) fn sqlite_dir(&self) -> Option<&Path> {
        match &self.storage {
            Storage::Sqlite(d) => Some(d),
            Storage::Memory => None,
        }
    }
}

/// Adds the index Tansu 0.6's sqlite schema lacks: its `header` table has none, so
/// fetching each record that carries a header (ours carry `content-type`) scans every
/// header in the broker. Fetch cost then grows with the data (1.7 ms per record at
/// 25,000 headers) until the broker is CPU-bound and consumers crawl. The index is what
/// the schema's own foreign key implies; it changes no broker behaviour, only speed.
/// Done with Python's `sqlite3` module (the test suite already needs Python 3).
fn index_headers(db: &Path) {
    let python = std::env::var("MPN_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import sqlite3, sys, time
deadline = time.time() + 20
while True:
    try:
        c = sqlite3.connect(sys.argv[1], timeout=10)
        c.execute("create index if not exists header_record on header (topition, offset_id)")
        c.commit()
        break
    except sqlite3.OperationalError as e:
        # The broker creates its schema as it starts: wait for the table.
        if time.time() > deadline:
            sys.exit(f"cannot index {sys.argv[1]}: {e}")
        time.sleep(0.05)
"#;
    let status = Command::new(&python)
        .args(["-c", script])
        .arg(db)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {python} to index Tansu's sqlite file: {e}"));
    assert!(status.success(), "indexing Tansu's sqlite file failed");
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}
