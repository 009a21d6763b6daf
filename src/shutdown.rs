//! `Shutdown`: a request to stop, from SIGINT/SIGTERM (or a test). The engine checks it
//! between pages: the page in hand is delivered and checkpointed, a page being fetched is
//! abandoned (nothing of it was delivered), and the window stays open for the next run.
//! An `exec:` handler gets a few seconds to confirm its page, then its process group is
//! killed. A second signal kills the handler's group and ends the process at once with
//! 130; the state file is crash-safe anyway.

use std::io::Write;
use tokio::sync::watch;

/// A cloneable stop flag.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: watch::Sender::new(false),
        }
    }
}

impl Shutdown {
    /// Asks everything holding a clone to stop.
    pub fn request(&self) {
        self.tx.send_replace(true);
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once a stop is asked for.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// A flag that SIGINT and SIGTERM raise; the second signal exits with 130.
    ///
    /// # Errors
    /// When the signal handlers cannot be installed.
    pub fn on_signals() -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        let shutdown = Shutdown::default();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let flag = shutdown.clone();
        tokio::spawn(async move {
            for count in 1.. {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                if count > 1 {
                    crate::sink::kill_running_handler();
                    let _ = writeln!(
                        std::io::stderr(),
                        "error: {name} again: stopping now; the next run resumes the open window"
                    );
                    #[allow(
                        clippy::exit,
                        reason = "the operator insisted; the state file is crash-safe"
                    )]
                    std::process::exit(130);
                }
                tracing::warn!(signal = name, "stopping after the page in hand");
                flag.request();
            }
        });
        Ok(shutdown)
    }
}
