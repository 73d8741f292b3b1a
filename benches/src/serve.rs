//! The load target that runs in its own process: `meshbench serve`.
//!
//! A separate process so that the client's CPU time, read with `getrusage(RUSAGE_SELF)`, holds
//! the client alone, and so that on a two-core machine the client and the server each have a
//! core. The server is a plain hyper HTTP/1.1 server on a current-thread runtime answering every
//! request with `200 ok`: the least work a server can do, so that what differs between variants
//! is the client. With `--grpc` it is a plain tonic echo service over HTTP/2 instead, for
//! `grpc-overhead`.

use std::convert::Infallible;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::BoxError;
use crate::cpu::pin_current_thread;

/// The subcommand that runs the server; not listed among the scenarios.
pub const SUBCOMMAND: &str = "serve";

/// A server process exits by itself after this long, should its parent never stop it.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Runs the server: prints the port it listens on as one line on stdout, then serves until stdin
/// closes (the parent exited or stopped it) or [`MAX_LIFETIME`] passes. `args` are what follows
/// the subcommand: `--cpu N` confines the server to CPU `N`; `--grpc` serves `grpc-overhead`'s
/// tonic echo service over HTTP/2 instead.
pub fn run(args: &[String]) -> Result<(), BoxError> {
    let (grpc, args) = match args.split_first() {
        Some((flag, rest)) if flag == "--grpc" => (true, rest),
        _ => (false, args),
    };
    match args {
        [] => {}
        [flag, cpu] if flag == "--cpu" => pin_current_thread(cpu.parse()?)?,
        _ => {
            return Err(
                format!("unexpected arguments {args:?}; expected [--grpc] [--cpu N]").into(),
            );
        }
    }
    // The parent holds our stdin open; when it goes, so do we, even if it could not kill us.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{port}")?;
        stdout.flush()?;
        drop(stdout);
        if grpc {
            let serve = crate::scenarios::grpc_overhead::serve(listener);
            let _ = tokio::time::timeout(MAX_LIFETIME, serve).await;
        } else {
            let _ = tokio::time::timeout(MAX_LIFETIME, accept(listener)).await;
        }
        Ok(())
    })
}

async fn accept(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(respond))
                .await;
        });
    }
}

async fn respond(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// A `meshbench serve` child process, killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    /// Starts this same executable as a server, confined to CPU `cpu` if given, and waits for
    /// the port it listens on.
    pub fn start(cpu: Option<usize>) -> Result<Self, BoxError> {
        Self::spawn(cpu, &[])
    }

    /// As [`ServerProcess::start`], serving `grpc-overhead`'s tonic echo service over HTTP/2.
    pub fn start_grpc(cpu: Option<usize>) -> Result<Self, BoxError> {
        Self::spawn(cpu, &["--grpc"])
    }

    fn spawn(cpu: Option<usize>, flags: &[&str]) -> Result<Self, BoxError> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command.arg(SUBCOMMAND).args(flags);
        if let Some(cpu) = cpu {
            command.arg("--cpu").arg(cpu.to_string());
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Ok(port) = line.trim().parse::<u16>() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the server process printed {line:?} instead of its port").into());
        };
        Ok(Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
