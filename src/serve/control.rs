//! The control plane's own runtime: the admin API (and `/metrics`, `/healthz`, `/readyz`), the
//! periodic full reload and the secret cache sweep run on worker threads of their own, at a
//! lower scheduling priority (`admin.thread_nice`) than the threads that answer Envoy
//! (ext_proc, SDS, xDS) and that apply other replicas' changes (the PostgreSQL change follower:
//! what keeps this replica's decisions right is data path work).
//!
//! Why: a decision waits for a CPU whenever the admin API is busy on the same cores. On the
//! benchmark machine (2 vCPU) 500 rule writes per second raised the p99 of ext_proc decisions
//! by 60 % with every task on one runtime (86 % on two runtimes at one priority, 51 % niced):
//! with the writes' threads niced, the scheduler
//! gives a runnable decision the CPU first (a thread at nice 10 weighs a tenth of one at 0)
//! and the writes take what the decisions leave. The writes do not starve: nice lowers a
//! thread's share under contention, it never stops it, and an idle data path leaves the
//! control plane every core.
//!
//! What the control plane shares with the data path stays non-blocking for readers: the
//! snapshot is swapped atomically, the secret cache is a sharded map whose writers hold a shard
//! for a map operation only. Pooled PostgreSQL connections are made on the main runtime
//! (`Store::connect`), so a connection a control task opened does not tie a decision's store
//! read (a secret cache miss) to the niced threads.

use std::future::Future;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

/// The runtime of the control plane's tasks; shut down (without waiting) when dropped, which
/// is allowed inside another runtime, unlike dropping a `Runtime`.
pub struct ControlRuntime {
    runtime: Option<Runtime>,
}

impl ControlRuntime {
    /// Starts the runtime: as many worker threads as the machine has cores, each lowered to
    /// `nice` (0: as the rest of the process) when it starts, blocking threads included.
    pub fn start(nice: u8) -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .enable_all()
            .thread_name("runta-control")
            // As the main runtime: a thread that ran a full load ends soon after, and the
            // memory it freed with it.
            .thread_keep_alive(std::time::Duration::from_secs(1))
            .on_thread_start(move || lower_priority(nice))
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .expect("the runtime lives until dropped")
            .handle()
    }

    /// Runs `task` on the control plane's threads.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle().spawn(task)
    }
}

impl Drop for ControlRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Lowers the calling thread's scheduling priority by `nice` (from the nice value it inherited,
/// the process's; 19 at most). On Linux the nice value is a per-thread attribute, set by thread
/// id; elsewhere, and where the system refuses (a sandbox filtering the call), the thread runs
/// as it is, which is logged once.
fn lower_priority(nice: u8) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    let lowered = {
        let thread = Some(rustix::thread::gettid());
        rustix::process::getpriority_process(thread)
            .and_then(|inherited| {
                rustix::process::setpriority_process(thread, (inherited + i32::from(nice)).min(19))
            })
            .map_err(|err| err.to_string())
    };
    #[cfg(not(target_os = "linux"))]
    let lowered: Result<(), String> = Err("per-thread priorities are set on Linux only".into());
    if let Err(err) = lowered {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(error = %err, nice, "the control plane's threads could not be lowered in priority (admin.thread_nice); they run at the data path's");
        });
    }
}

/// The calling thread's nice value (tests: what `lower_priority` did).
#[cfg(all(test, target_os = "linux"))]
fn current_nice() -> i32 {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority")
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice values of a worker thread and of a blocking thread of `control`.
    fn nice_of_threads(control: &ControlRuntime) -> (i32, i32) {
        let handle = control.handle();
        (
            handle
                .block_on(control.spawn(async { current_nice() }))
                .unwrap(),
            handle
                .block_on(handle.spawn_blocking(current_nice))
                .unwrap(),
        )
    }

    #[test]
    fn control_threads_run_at_the_configured_nice_and_the_caller_keeps_its_own() {
        let before = current_nice();
        let control = ControlRuntime::start(7).unwrap();
        let lowered = (before + 7).min(19);
        assert_eq!(nice_of_threads(&control), (lowered, lowered));
        assert_eq!(
            current_nice(),
            before,
            "only the runtime's own threads are lowered"
        );
    }

    #[test]
    fn nice_zero_leaves_the_threads_as_they_are() {
        let before = current_nice();
        let control = ControlRuntime::start(0).unwrap();
        assert_eq!(nice_of_threads(&control), (before, before));
    }
}
