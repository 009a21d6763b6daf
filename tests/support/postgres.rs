//! A real Postgres for the tests, started by the tests: a throwaway cluster made with the
//! system's `initdb` in a temporary directory, served by its `postgres` on a free port of
//! 127.0.0.1 with password logins, shared by every test of the process, each of which
//! gets a database of its own. As root, the cluster runs as the `postgres` user (or
//! `nobody`), since Postgres refuses to run as root.
//!
//! The server dies with the test process: it is started through `setpriv --pdeathsig`
//! from a thread that lives as long as the process, so the kernel stops it (a fast
//! shutdown) when the process ends, however it ends. Directories a dead run left are
//! removed by the next.
//!
//! `MARTECH_TEST_POSTGRES=postgres://USER:PASSWORD@HOST:PORT/DB` points the tests at an
//! existing server instead; USER must be allowed to create databases.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the cluster's password logins use.
pub const USER: &str = "martech";

/// The server every test of this process shares.
pub struct Server {
    /// `postgres://USER:PASSWORD@HOST:PORT` without a database.
    base: String,
    /// Prefix of the databases this process creates (unique per process).
    prefix: String,
}

/// A database of one test: its URL, with the password.
pub struct Database {
    pub url: String,
    pub name: String,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT: AtomicU64 = AtomicU64::new(0);

/// The shared server, started on first use.
///
/// # Panics
/// When no Postgres can be found or started: the README's test command installs it.
pub fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        let prefix = format!("t{}_", std::process::id());
        match std::env::var("MARTECH_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => Server {
                base: url
                    .rsplit_once('/')
                    .filter(|(base, _)| base.contains('@') || base.ends_with(':'))
                    .map_or(url.clone(), |(base, _)| base.to_owned()),
                prefix,
            },
            _ => Server {
                base: start_cluster(),
                prefix,
            },
        }
    })
}

impl Server {
    /// A new, empty database.
    pub async fn database(&self) -> Database {
        let name = format!("{}{}", self.prefix, NEXT.fetch_add(1, Ordering::Relaxed));
        let admin = connect(&format!("{}/postgres", self.base)).await;
        // One statement each: DROP and CREATE DATABASE refuse to run in a transaction.
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .expect("creating a test database");
        }
        Database {
            url: format!("{}/{name}", self.base),
            name,
        }
    }

    /// The password of the URLs (to check it never shows).
    pub fn password(&self) -> String {
        let userinfo = self
            .base
            .split_once("://")
            .and_then(|(_, rest)| rest.rsplit_once('@'))
            .map_or("", |(userinfo, _)| userinfo);
        userinfo
            .split_once(':')
            .map_or(String::new(), |(_, p)| p.to_owned())
    }
}

impl Database {
    /// The URL without its password, and the password (for `PGPASSWORD`): a URL with a
    /// password warns, as `ps` shows it.
    pub fn split_url(&self) -> (String, String) {
        let (scheme, rest) = self.url.split_once("://").expect("a URL");
        let (userinfo, host) = rest.rsplit_once('@').expect("a user");
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        (format!("{scheme}://{user}@{host}"), password.to_owned())
    }

    /// A client on this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// An audit of every write to `hubspot.contacts` (which must exist; it is emptied),
    /// for counting versions written twice.
    pub async fn audit_writes(&self) {
        self.client()
            .await
            .batch_execute(
                "CREATE TABLE audit (id bigint, updated_at timestamptz, archived boolean);
                 CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                     INSERT INTO audit VALUES (NEW.id, NEW.updated_at, NEW.archived);
                     RETURN NEW;
                 END $$;
                 CREATE TRIGGER audit AFTER INSERT OR UPDATE ON hubspot.contacts
                     FOR EACH ROW EXECUTE FUNCTION audit();
                 TRUNCATE hubspot.contacts;",
            )
            .await
            .expect("installing the audit trigger");
    }

    /// The (id, writes) of every version the audit saw written more than once.
    pub async fn written_twice(&self) -> Vec<(i64, i64)> {
        self.client()
            .await
            .query(
                "SELECT id, count(*) FROM audit GROUP BY id, updated_at, archived HAVING count(*) > 1",
                &[],
            )
            .await
            .expect("reading the audit")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// The one number `sql` selects.
    pub async fn number(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }
}

/// Connects without TLS (the cluster is on loopback).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connecting to the test postgres");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The directory with `initdb` and `postgres`: on PATH, else Debian's newest
/// `/usr/lib/postgresql/N/bin`.
fn bin_dir() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                return dir;
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).expect(
        "no PostgreSQL server found (initdb): run the tests with tests/run, which installs it, \
         or set MARTECH_TEST_POSTGRES to an existing server",
    )
}

/// Whether this process runs as root (then the cluster runs as another user).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The user the cluster runs as when we are root: `postgres` if it exists.
fn cluster_user() -> &'static str {
    let exists = Command::new("id")
        .arg("-u")
        .arg("postgres")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if exists { "postgres" } else { "nobody" }
}

/// `program args` as the cluster's user, through setpriv when we are root.
fn as_cluster_user(program: &Path) -> Command {
    if is_root() {
        let user = cluster_user();
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", user, "--regid", user, "--clear-groups"])
            .arg("--pdeathsig")
            .arg("INT")
            .arg(program);
        cmd
    } else {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "INT"]).arg(program);
        cmd
    }
}

/// Removes the directories of earlier runs whose process is gone.
fn remove_stale(root: &Path) {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("martech-pg-"))
            .and_then(|n| n.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Makes and starts a cluster; returns its base URL.
fn start_cluster() -> String {
    let bin = bin_dir();
    let tmp = std::env::temp_dir();
    remove_stale(&tmp);
    let dir = tmp.join(format!(
        "martech-pg-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir(&dir).expect("creating the cluster directory");
    let password = format!("pw{}", rand_suffix());
    let pwfile = dir.join("pwfile");
    std::fs::File::create(&pwfile)
        .and_then(|mut f| writeln!(f, "{password}"))
        .expect("writing the password file");
    if is_root() {
        let user = cluster_user();
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:"))
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(status.success(), "chown of the cluster directory");
    }
    let data = dir.join("data");
    let out = as_cluster_user(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .args(["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
        .output()
        .expect("running initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let mut server = as_cluster_user(&bin.join("postgres"));
    server
        .arg("-D")
        .arg(&data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(&dir)
        .args(["-c", "listen_addresses=127.0.0.1"])
        // fsync off (a throwaway cluster); synchronous_commit and full_page_writes left
        // on: with them off, cargo bench measured the sink two to twenty times slower.
        .args(["-c", "fsync=off", "-c", "max_connections=200"])
        .args([
            "-c",
            "logging_collector=off",
            "-c",
            "log_min_messages=warning",
        ])
        .args(["-c", "log_min_error_statement=panic"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // The server is a child of a thread that never ends, so that the parent-death signal
    // comes when the process ends, not when the test that started it does.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let log_path = dir.join("server.log");
    std::thread::spawn(move || {
        let mut child = match server.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = ready_tx.send(Err(format!("starting postgres: {e}")));
                return;
            }
        };
        let stderr = child.stderr.take().expect("piped stderr");
        let mut log = std::fs::File::create(&log_path).ok();
        let mut ready = Some(ready_tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(log) = &mut log {
                let _ = writeln!(log, "{line}");
            }
            if line.contains("ready to accept connections")
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(Ok(()));
            }
        }
        let status = child.wait();
        if let Some(tx) = ready.take() {
            let _ = tx.send(Err(format!("postgres exited: {status:?}")));
        }
        // Keep the thread, and so the parent-death signal, alive until the process ends.
        loop {
            std::thread::park();
        }
    });
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!(
            "{e}; log: {}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        ),
        Err(_) => panic!("the postgres thread ended"),
    }
    format!("postgres://{USER}:{password}@127.0.0.1:{port}")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn rand_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}
