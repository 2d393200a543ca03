//! The `sigild` binary: the command line, dev mode and the benchmark, on top of the library's
//! composition root ([`sigild::app`]). One thing is done here rather than in the library:
//! pointing SoftHSM at the dev token store, because that means setting an environment variable
//! before any thread exists.

mod bench;
mod cli;
mod dev;
mod pointer;

use std::process::ExitCode;

use clap::Parser as _;
use cli::{Cli, Command};
use sigild::{app, config::Config};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    // Dev and bench run on a SoftHSM token store of their own: set SOFTHSM2_CONF while the
    // process is still single-threaded (before the runtime starts).
    let dev_paths = match &cli.command {
        Command::Dev { state_dir, listen } => Some(dev::prepare(state_dir, *listen)),
        Command::Bench(args) => {
            let dir = args.state_dir.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("sigild-bench-{}", std::process::id()))
            });
            let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            Some(dev::prepare(&dir, listen))
        }
        _ => None,
    };
    let dev_paths = match dev_paths.transpose() {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    if let Some(p) = &dev_paths {
        set_softhsm_conf(&p.softhsm_conf);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let result: Result<(), Box<dyn std::error::Error>> = runtime.block_on(async move {
        match cli.command {
            Command::Serve { config } => {
                // Before any slow step: from here on SIGTERM/SIGINT stop the daemon in order.
                let stop = stop_on_signals()?;
                let c = Config::load(&config)?;
                let Some(running) = unless_stopped(app::start(&c, &config, &stop).await)? else {
                    return Ok(());
                };
                running.run_until(stop.wait()).await?;
            }
            Command::Dev { .. } => {
                let stop = stop_on_signals()?;
                let paths = dev_paths.ok_or("dev paths missing")?;
                dev_mode(&paths, &stop).await?;
            }
            Command::CheckConfig { config, offline } => cli::check_config(&config, offline)?,
            Command::Bench(args) => {
                let paths = dev_paths.ok_or("bench paths missing")?;
                let result = if let Some(path) = &args.profile {
                    bench::run_profile(&paths, &args, path).await
                } else if args.overload {
                    bench::run_overload(&paths, &args).await
                } else {
                    bench::run(&paths, &args).await.map(drop)
                };
                if args.state_dir.is_none() {
                    let _ = std::fs::remove_dir_all(&paths.dir);
                }
                result?;
            }
            Command::Key { conn, command } => cli::key_command(&conn, command).await?,
            Command::Jwks { conn } => cli::jwks_command(&conn).await?,
            Command::Sign { conn, command } => cli::sign_command(&conn, command).await?,
            Command::Tls { conn, command } => cli::tls_command(&conn, command).await?,
            Command::Decrypt {
                conn,
                key,
                algs,
                encs,
            } => cli::decrypt_command(&conn, &key, &algs, &encs).await?,
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Told to stop before serving: a clean exit, whichever step noticed it.
        Err(e) if matches!(e.downcast_ref(), Some(app::StartError::Stopped)) => {
            tracing::info!("stopped during start-up");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&*e),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("sigild: {e}");
    ExitCode::FAILURE
}

#[allow(unsafe_code)]
fn set_softhsm_conf(path: &std::path::Path) {
    // SAFETY: called from `main` before the tokio runtime or any other thread is started, so
    // no other thread can be reading the environment concurrently.
    unsafe { std::env::set_var("SOFTHSM2_CONF", path) };
}

/// Logs go to stderr (stdout is for results), level from `SIGILD_LOG` (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIGILD_LOG")
        // cryptoki logs an error for every session it cannot close after the module was
        // re-initialised (sigild does that to recover a token); those sessions are gone anyway.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,cryptoki::session::session_management=off")
        });
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Take over SIGTERM and SIGINT now (the handlers are installed before this returns, so no
/// later step can be cut short by the default action) and turn the first of them into a stop
/// request; a later one only says that the stop is under way.
fn stop_on_signals() -> std::io::Result<app::Stop> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (stopper, stop) = app::Stop::new();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let name = tokio::select! {
                Some(()) = term.recv() => "SIGTERM",
                Some(()) = int.recv() => "SIGINT",
                else => return,
            };
            if first {
                tracing::info!(signal = name, "shutting down");
                stopper.stop();
                first = false;
            } else {
                tracing::info!(signal = name, "already shutting down");
            }
        }
    });
    Ok(stop)
}

/// `None` when start-up was stopped on request (the daemon exits 0), the started value
/// otherwise.
fn unless_stopped<T>(started: Result<T, app::StartError>) -> Result<Option<T>, app::StartError> {
    match started {
        Ok(v) => Ok(Some(v)),
        Err(app::StartError::Stopped) => {
            tracing::info!("stopped during start-up");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `sigild dev`: the token, the daemon, the default keys, and only then the listeners and the
/// pointer, so that whoever reaches the daemon finds every default key. A stop request is
/// honoured between any two steps (a step on the device is finished first).
async fn dev_mode(
    paths: &dev::DevPaths,
    stop: &app::Stop,
) -> Result<(), Box<dyn std::error::Error>> {
    if stop.requested() {
        tracing::info!("stopped during start-up");
        return Ok(());
    }
    let p2 = paths.clone();
    let created = tokio::task::spawn_blocking(move || dev::ensure_token(&p2)).await??;
    if created {
        tracing::info!(dir = %paths.dir.display(), "created the SoftHSM dev token");
    }
    if stop.requested() {
        tracing::info!("stopped during start-up");
        return Ok(());
    }
    let c = Config::load(&paths.config)?;
    let socket = app::reserve(c.server.listen)?;
    let Some(prepared) = unless_stopped(app::prepare(&c, &paths.config, stop).await)? else {
        return Ok(());
    };
    let keys = match dev::ensure_default_keys(prepared.service(), stop).await {
        Ok(keys) => keys,
        Err(e) => {
            prepared.shutdown().await;
            return Err(e.chain().to_string().into());
        }
    };
    if !keys.is_empty() {
        tracing::info!(keys = ?keys, "created default dev keys");
    }
    let Some(running) = unless_stopped(prepared.serve(socket, stop).await)? else {
        return Ok(());
    };
    let endpoint = format!("https://{}", running.addr());
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "sigild".into());
    match pointer::write(&pointer::DevPointer {
        dir: paths.dir.clone(),
        endpoint: endpoint.clone(),
        pid: std::process::id(),
    }) {
        Ok(at) => tracing::info!(
            pointer = %at.display(),
            "sigild dev ready on {endpoint} (mTLS, dev PKI in {dir}) and unix:{socket}: as this user, from any directory, try `{exe} key list` or `{exe} jwks`",
            dir = paths.dir.display(),
            socket = paths.socket.display(),
        ),
        Err(e) => tracing::info!(
            "sigild dev ready on {endpoint} (mTLS, dev PKI in {dir}) and unix:{socket}: no dev pointer ({e}); try `{exe} key list --endpoint unix:{socket}`",
            dir = paths.dir.display(),
            socket = paths.socket.display(),
        ),
    }
    let result = running.run_until(stop.wait()).await;
    pointer::remove(&paths.dir);
    Ok(result?)
}
