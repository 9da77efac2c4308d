//! A steadfast server in a child process (`child_server`), for tests that crash it
//! (SIGKILL: no shutdown, no final flush) or limit its file sizes.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

/// The server child process; killed when dropped.
pub(crate) struct ServerProcess {
    child: Child,
    stdout: BufReader<ChildStdout>,
    /// The `HOST:PORT` it serves on.
    pub(crate) bootstrap: String,
}

impl ServerProcess {
    /// Starts a server on `dir`, with a file-size limit if given, and waits until it serves.
    pub(crate) fn spawn(dir: &Path, fsize_limit: Option<u64>) -> Self {
        let limit = fsize_limit.map(|l| l.to_string());
        let args: Vec<&OsStr> = match &limit {
            Some(limit) => vec!["--fsize-limit".as_ref(), limit.as_ref()],
            None => Vec::new(),
        };
        Self::spawn_with(dir, &args)
    }

    /// Starts a server on `dir` with more `child_server` flags, and waits until it serves.
    pub(crate) fn spawn_with(dir: &Path, args: &[&OsStr]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_child_server"));
        command
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("spawn child_server");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let line = read_line(&mut stdout);
        let bootstrap = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"))
            .to_owned();
        ServerProcess {
            child,
            stdout,
            bootstrap,
        }
    }

    /// Lifts the child's file-size limit (SIGUSR1) and waits until it says it did.
    pub(crate) fn lift_limit(&mut self) {
        let status = Command::new("kill")
            .arg("-USR1")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -USR1 failed");
        assert_eq!(read_line(&mut self.stdout), "fsize limit lifted");
    }

    /// The address it serves on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.bootstrap
            .parse()
            .unwrap_or_else(|e| panic!("server address {:?}: {e}", self.bootstrap))
    }

    /// The child's peak resident memory so far (`VmHWM`), in bytes.
    pub(crate) fn peak_rss(&self) -> u64 {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in {path}"));
        kib * 1024
    }

    /// Stops the child with SIGTERM (a clean shutdown) and waits for it.
    pub(crate) fn stop(mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let exit = self.child.wait().expect("reap the server");
        assert!(exit.success(), "the server exited with {exit}");
    }

    /// Kills the child at once (a crash: no shutdown, no final flush).
    pub(crate) fn crash(mut self) {
        self.child.kill().expect("kill the server");
        self.child.wait().expect("reap the server");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next line the child prints (the child exiting fails the test).
fn read_line(stdout: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    let n = stdout
        .read_line(&mut line)
        .expect("read the server's stdout");
    assert!(n > 0, "the server exited");
    line.trim_end().to_owned()
}
