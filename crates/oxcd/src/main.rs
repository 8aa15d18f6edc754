//! The `oxcd` binary: etcd's `main`. Looks at the first argument
//! (`snapshot status|restore` and `export-etcd` offline, `gateway start`,
//! `grpc-proxy start`, otherwise the server), turns flags,
//! `ETCD_*` environment and `--config-file` into one `embed` config, sets up
//! logging, starts the member and waits for SIGINT/SIGTERM.

mod flags;
mod gateway;
mod grpc_proxy;
mod help;
mod log_rotation;
mod logging;
mod offline;
mod proxy_flags;
mod srv_discovery;

use oxcd_server::config::Config;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the request path allocates many small,
/// short-lived buffers across threads, where glibc's arenas spent ~15 % of
/// the CPU in the put-1000-clients profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // No transparent huge pages: mimalloc asks for them on its arenas, and
    // with 2 MiB pages a half-used arena is resident in full. After 100k
    // keys this was 30 MiB of a 106 MiB RSS (AnonHugePages in smaps); the
    // kernel's page-zeroing for them also showed in the put profile. Best
    // effort: a kernel without the prctl just keeps its default.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    raise_fd_limit();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("snapshot") => return offline::snapshot(&args[2..]),
        Some("export-etcd") => return offline::export_etcd(&args[2..]),
        Some("gateway") => return gateway::main(&args[2..]),
        Some("grpc-proxy") => return grpc_proxy::main(&args[2..]),
        _ => {}
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    let parsed = match flags::parse(args.into_iter().skip(1).collect(), env) {
        flags::ParseOutcome::Run(p) => *p,
        flags::ParseOutcome::Exit(code) => return ExitCode::from(code as u8),
    };
    if let Err(e) = logging::init(&parsed.config) {
        eprintln!("oxcd: {e}");
        return ExitCode::from(1);
    }
    for n in &parsed.notices {
        match n.level {
            flags::NoticeLevel::Info => tracing::info!("{}", n.message),
            flags::NoticeLevel::Warn => tracing::warn!("{}", n.message),
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(run(parsed.config))
}

async fn run(cfg: Config) -> ExitCode {
    let etcd = match oxcd_server::embed::start(cfg).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    release_startup_memory();
    notify_systemd();
    let signal = wait_for_signal().await;
    tracing::info!("received terminate signal, shutting down");
    etcd.close().await;
    die_by(signal)
}

/// Tells systemd (a `Type=notify` unit, `NOTIFY_SOCKET` set) that the
/// member serves clients, with etcd's log lines around it.
fn notify_systemd() {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    tracing::info!("notifying init daemon");
    match sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        Ok(()) => tracing::info!("successfully notified init daemon"),
        Err(e) => tracing::error!(error = %e, "failed to notify init daemon"),
    }
}

/// Ends the process by the signal that stopped it, after the graceful
/// close, as etcd does (it re-raises the signal): a shell or systemd then
/// sees 143 for SIGTERM and 130 for SIGINT, not a clean exit.
fn die_by(signal: Option<libc::c_int>) -> ExitCode {
    let Some(sig) = signal else {
        return ExitCode::SUCCESS;
    };
    // SAFETY: resetting a signal's disposition to the default and raising
    // it take no pointers; the process is meant to end here.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    // Only reached if the signal did not end the process.
    ExitCode::from(u8::try_from(128 + sig).unwrap_or(1))
}

/// Raises the soft limit on open files to the hard one, as Go's runtime
/// does for etcd at start: with the usual soft limit of 1024 a member or
/// a proxy would refuse clients long before etcd does. Best effort.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
}

/// Returns what start-up freed to the OS. Recovery (index rebuild, WAL
/// replay) frees a lot at once, and mimalloc purges freed pages only on
/// later allocator activity of the same threads: an idle member restarted
/// with 250k keys kept 249 MiB resident instead of 85.
fn release_startup_memory() {
    // SAFETY: mi_collect takes no pointers and may be called from any
    // thread at any time; it only returns free memory to the OS.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Waits for SIGTERM or SIGINT and says which came.
async fn wait_for_signal() -> Option<libc::c_int> {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can only be killed; wait forever.
        std::future::pending::<()>().await;
        return None;
    };
    tokio::select! {
        _ = term.recv() => Some(libc::SIGTERM),
        _ = int.recv() => Some(libc::SIGINT),
    }
}
