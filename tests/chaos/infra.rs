//! The processes a chaos run starts and breaks: the embedded server (a child running this
//! binary as `CHAOS_ROLE=server`), a private Postgres cluster, a private Redis (from
//! `support`), and the worker fleet. The shared services on 5432 and 6379 are never touched.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::roles::{now_ns, WorkerSpec};
use crate::support::free_port;

/// Runs `cmd` to its end; panics with its output when it fails.
fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until something accepts connections on `port`.
fn wait_for_port(port: u16, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} does not accept connections on port {port} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The embedded server as a child process, killed with SIGKILL and started again on the
/// same port and data dir.
#[derive(Debug)]
pub struct ServerProc {
    port: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl ServerProc {
    pub fn start(data: &Path, log: &Path) -> ServerProc {
        let mut s = ServerProc {
            port: free_port(),
            data: data.to_owned(),
            log: log.to_owned(),
            child: None,
        };
        s.restart();
        s
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let child = Command::new(std::env::current_exe().expect("this binary"))
            .env("CHAOS_ROLE", "server")
            .env("CHAOS_SERVER_LISTEN", self.bootstrap())
            .env("CHAOS_SERVER_DATA", &self.data)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the server process starts");
        self.child = Some(child);
        wait_for_port(self.port, "the embedded server", Duration::from_secs(60));
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private Postgres cluster (`initdb` in a temp dir, run as the `postgres` user) on a free
/// port: crashed with `pg_ctl stop -m immediate`, started again on the same port, removed
/// with the guard.
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    running: bool,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max_by_key(|bin| {
                bin.parent()
                    .and_then(Path::file_name)
                    .and_then(|v| v.to_str())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .expect("no /usr/lib/postgresql/<version>/bin/initdb: install PostgreSQL (apt-get install postgresql)");
        let dir = tempfile::tempdir().expect("temp dir");
        run(Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path()));
        let mut pg = PrivatePostgres {
            dir,
            bin,
            port: free_port(),
            running: false,
        };
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg.bin.join("initdb"))
            .arg("-D")
            .arg(pg.data())
            .args(["-A", "trust", "-U", "postgres", "--no-sync"]));
        pg.restart();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data());
        cmd
    }

    /// Starts the cluster (after a crash: with recovery) and waits until it accepts
    /// connections.
    pub fn restart(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400",
            self.port,
            self.dir.path().display()
        );
        run(self
            .pg_ctl()
            .args(["-o", &options, "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-w", "-t", "60", "start"]));
        self.running = true;
    }

    /// `pg_ctl stop -m immediate`: every backend killed without a checkpoint, as in a crash.
    pub fn crash(&mut self) {
        if self.running {
            run(self.pg_ctl().args(["-m", "immediate", "-w", "stop"]));
            self.running = false;
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .pg_ctl()
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// What became of a worker process.
#[derive(Debug, Default)]
pub struct Fate {
    /// When it was reaped (ns since the epoch), and how it exited.
    pub exited: Option<(i64, ExitStatus)>,
    /// When SIGTERM was sent.
    pub termed: Option<i64>,
    /// When SIGKILL was sent.
    pub killed: Option<i64>,
}

/// One worker process; a thread waits on it and stamps its exit.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub group: usize,
    pub pid: u32,
    pub log: PathBuf,
    pub runs: PathBuf,
    pub observe: String,
    pub fate: Arc<Mutex<Fate>>,
}

impl Proc {
    pub fn live(&self) -> bool {
        self.fate.lock().exited.is_none()
    }

    /// Whether it was sent SIGTERM: a second one would make it exit at once (130).
    pub fn termed(&self) -> bool {
        self.fate.lock().termed.is_some()
    }

    fn signal(&self, signal: &str) {
        if self.live() {
            let _ = Command::new("kill")
                .args([signal, &self.pid.to_string()])
                .status();
        }
    }

    /// Waits until the waiter thread reaped it, up to `limit`.
    pub fn wait_exit(&self, limit: Duration) -> Option<(i64, ExitStatus)> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.fate.lock().exited {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The worker processes of one seed.
#[derive(Debug)]
pub struct Fleet {
    pub logs: PathBuf,
    pub procs: Vec<Proc>,
    /// Per group: the spec every new worker starts from.
    pub specs: [WorkerSpec; 2],
}

impl Fleet {
    /// Starts the next worker of `group`: `a1`, `a2`, ... `b1`, ...
    pub fn spawn(&mut self, group: usize) -> String {
        let label = &self.specs[group].settings.label;
        let n = self.procs.iter().filter(|p| p.group == group).count() + 1;
        let name = format!("{label}{n}");
        let log = self.logs.join(format!("{name}.log"));
        let runs = self.logs.join(format!("{name}.runs"));
        let observe = format!("127.0.0.1:{}", free_port());
        let mut spec = self.specs[group].clone();
        spec.name.clone_from(&name);
        spec.runs_file.clone_from(&runs);
        spec.observe.clone_from(&observe);
        let stderr = File::create(&log).expect("worker log");
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| {
            "info,steadfast::policy::stale=warn,steadfast::handler=warn".to_owned()
        });
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .env("CHAOS_ROLE", "worker")
            .env("CHAOS_WORKER", serde_json::to_string(&spec).expect("spec"))
            .env("RUST_LOG", filter)
            // The panicking handler's backtraces would bury everything else.
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("a worker starts");
        let pid = child.id();
        let fate = Arc::new(Mutex::new(Fate::default()));
        let stamp = fate.clone();
        std::thread::spawn(move || {
            let status = child.wait().expect("the worker is reaped");
            stamp.lock().exited = Some((now_ns(), status));
        });
        self.procs.push(Proc {
            name: name.clone(),
            group,
            pid,
            log,
            runs,
            observe,
            fate,
        });
        name
    }

    pub fn live(&self, group: usize) -> Vec<&Proc> {
        self.procs
            .iter()
            .filter(|p| p.group == group && p.live())
            .collect()
    }

    /// The live workers of `group` not sent SIGTERM yet.
    pub fn not_termed(&self, group: usize) -> Vec<&Proc> {
        self.live(group)
            .into_iter()
            .filter(|p| !p.termed())
            .collect()
    }

    /// SIGKILL, and wait until reaped.
    pub fn kill(&self, name: &str) {
        let p = self.by_name(name);
        p.fate.lock().killed = Some(now_ns());
        p.signal("-KILL");
        p.wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("worker {name} was not reaped after SIGKILL"));
    }

    /// SIGTERM; the exit is checked later. Sent once the worker serves its endpoint (up to
    /// 15 s), which it does after it listens for signals: a SIGTERM in a process's first
    /// milliseconds, before its `main` got that far, ends it by the signal's default action
    /// (seed 19018: a worker started and sent SIGTERM in the same millisecond exited by
    /// signal 15, its log empty), which no program can drain from.
    pub fn term(&self, name: &str) {
        let p = self.by_name(name);
        let deadline = Instant::now() + Duration::from_secs(15);
        while p.live() && Instant::now() < deadline && TcpStream::connect(&p.observe).is_err() {
            std::thread::sleep(Duration::from_millis(20));
        }
        p.fate.lock().termed = Some(now_ns());
        p.signal("-TERM");
    }

    pub fn by_name(&self, name: &str) -> &Proc {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .expect("a worker of that name")
    }

    /// Workers that were sent SIGTERM and did not exit 0 within `limit` of it (now or
    /// before): `name: what happened`.
    pub fn bad_exits(&self, limit: Duration) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.procs {
            let (termed, killed) = {
                let f = p.fate.lock();
                (f.termed, f.killed)
            };
            let Some(termed) = termed else { continue };
            if killed.is_some() {
                continue;
            }
            let waited = Duration::from_nanos(u64::try_from(now_ns() - termed).unwrap_or(0));
            match p.wait_exit(limit.saturating_sub(waited)) {
                None => out.push(format!(
                    "worker {} did not exit within {limit:?} of SIGTERM",
                    p.name
                )),
                Some((at, status)) if !status.success() => out.push(format!(
                    "worker {} exited with {status} {:.1} s after SIGTERM, not 0",
                    p.name,
                    (at - termed) as f64 / 1e9
                )),
                Some(_) => {}
            }
        }
        out
    }

    /// SIGTERM to every live worker.
    pub fn term_all(&self) {
        let names: Vec<String> = self
            .procs
            .iter()
            .filter(|p| p.live() && !p.termed())
            .map(|p| p.name.clone())
            .collect();
        for name in names {
            self.term(&name);
        }
    }

    /// `/metrics` lines about in-flight work, parking and lag, and `/readyz`, of every live
    /// worker: what a wedge looks like from outside.
    pub fn observe_live(&self) -> String {
        let mut out = String::new();
        for p in self.procs.iter().filter(|p| p.live()) {
            let metrics = http_get(&p.observe, "/metrics").unwrap_or_else(|e| e);
            // Lag lines only where there is lag.
            let mut interesting: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    !l.starts_with('#')
                        && [
                            "steadfast_in_flight",
                            "steadfast_running",
                            "steadfast_parked",
                            "steadfast_messages_routed",
                            "steadfast_consumer_lag",
                        ]
                        .iter()
                        .any(|m| l.starts_with(m))
                        && !(l.starts_with("steadfast_consumer_lag") && l.ends_with(" 0"))
                })
                .collect();
            interesting.sort_unstable();
            let ready = http_get(&p.observe, "/readyz").unwrap_or_else(|e| e);
            out.push_str(&format!(
                "\n  worker {} (pid {}): readyz {}\n    {}",
                p.name,
                p.pid,
                ready.trim(),
                interesting.join("\n    ")
            ));
        }
        out
    }

    /// The last `n` lines of every worker's log.
    pub fn log_tails(&self, n: usize) -> String {
        let mut out = String::new();
        for p in &self.procs {
            let lines: Vec<String> = File::open(&p.log)
                .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
                .unwrap_or_default();
            out.push_str(&format!(
                "---- worker {} (pid {}): last lines of {} ----\n",
                p.name,
                p.pid,
                p.log.display()
            ));
            for line in &lines[lines.len().saturating_sub(n)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Each worker's death time (ns), for runs its death cut.
    pub fn deaths(&self) -> BTreeMap<String, Option<i64>> {
        self.procs
            .iter()
            .map(|p| (p.name.clone(), p.fate.lock().exited.map(|(at, _)| at)))
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in &self.procs {
            p.signal("-KILL");
        }
        for p in &self.procs {
            let _ = p.wait_exit(Duration::from_secs(5));
        }
    }
}

/// The body of `GET path` on `addr` (HTTP/1.0, two-second limits), or what went wrong.
fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("(no answer: {e})"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| format!("(write: {e})"))?;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    Ok(body
        .split_once("\r\n\r\n")
        .map_or(body.clone(), |(_, b)| b.to_owned()))
}

/// When a run ended: the line's time, or the death of its process.
#[derive(Debug, Clone)]
pub struct HandlerRun {
    pub worker: String,
    pub group: String,
    pub key: String,
    pub id: String,
    pub attempt: u32,
    pub start: i64,
    /// `None`: no end line (its process died in it).
    pub end: Option<i64>,
}

/// Every handler run the workers logged.
pub fn read_runs(fleet: &Fleet) -> Vec<HandlerRun> {
    let mut out = Vec::new();
    for p in &fleet.procs {
        let text = std::fs::read_to_string(&p.runs).unwrap_or_default();
        let mut open: BTreeMap<u64, usize> = BTreeMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["S", run, ns, group, key, id, attempt] => {
                    open.insert(run.parse().expect("run"), out.len());
                    out.push(HandlerRun {
                        worker: p.name.clone(),
                        group: (*group).to_owned(),
                        key: (*key).to_owned(),
                        id: (*id).to_owned(),
                        attempt: attempt.parse().expect("attempt"),
                        start: ns.parse().expect("ns"),
                        end: None,
                    });
                }
                ["E", run, ns] => {
                    if let Some(i) = open.remove(&run.parse::<u64>().expect("run")) {
                        out[i].end = Some(ns.parse().expect("ns"));
                    }
                }
                // A line cut by SIGKILL mid-write.
                _ => {}
            }
        }
    }
    out
}

/// Seconds since `origin` (ns), for messages.
pub fn secs_since(origin: SystemTime, ns: i64) -> f64 {
    let origin = origin
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(0));
    (ns - origin) as f64 / 1e9
}
