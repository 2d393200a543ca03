//! The `sigild` binary: parses the command line and hands over to the library. The one thing
//! done here rather than in the library is pointing SoftHSM at the dev token store, because
//! that means setting an environment variable before any thread exists.

use std::process::ExitCode;

use clap::Parser as _;
use sigild::cli::{self, Cli, Command};
use sigild::{bench, config::Config, dev, server};

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
                let c = Config::load(&config)?;
                let running = server::start(&c, &config).await?;
                running.run_until(shutdown_signal()).await?;
            }
            Command::Dev { .. } => {
                let paths = dev_paths.ok_or("dev paths missing")?;
                let p2 = paths.clone();
                let created = tokio::task::spawn_blocking(move || dev::ensure_token(&p2)).await??;
                if created {
                    tracing::info!(dir = %paths.dir.display(), "created the SoftHSM dev token");
                }
                let c = Config::load(&paths.config)?;
                let running = server::start(&c, &paths.config).await?;
                let keys = dev::ensure_default_keys(&running.service)
                    .await
                    .map_err(|e| e.chain().to_string())?;
                if !keys.is_empty() {
                    tracing::info!(keys = ?keys, "created default dev keys");
                }
                tracing::info!(
                    "sigild dev ready on https://{} (mTLS with the client certificate in {}) and unix:{}: try `sigild key list` or `sigild jwks` from the directory holding .sigild/",
                    running.addr,
                    paths.dir.display(),
                    paths.socket.display()
                );
                running.run_until(shutdown_signal()).await?;
            }
            Command::CheckConfig { config } => cli::check_config(&config)?,
            Command::Bench(args) => {
                let paths = dev_paths.ok_or("bench paths missing")?;
                let result = bench::run(&paths, &args).await;
                if args.state_dir.is_none() {
                    let _ = std::fs::remove_dir_all(&paths.dir);
                }
                result?;
            }
            Command::Key { conn, command } => cli::key_command(&conn, command).await?,
            Command::Jwks { conn } => cli::jwks_command(&conn).await?,
            Command::Sign { conn, command } => cli::sign_command(&conn, command).await?,
            Command::Tls { conn, command } => cli::tls_command(&conn, command).await?,
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
