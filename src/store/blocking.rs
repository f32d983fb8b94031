//! Where a SQLite connection runs its statements. SQLite's API blocks, so diesel-async runs
//! every statement on tokio's blocking pool and awaits it: one hop to another thread and back
//! per statement. An audited write is seven statements (begin, the audit chain's head, the
//! write's own check and insert, the event, the head's update, commit), and under sustained
//! writes those hops (a task switch each way) were a third of the server's CPU.
//!
//! `in_one_hop` runs a whole transaction on the calling thread instead, once, after telling
//! tokio that this thread blocks (`block_in_place`: the worker's other tasks move to another
//! thread meanwhile): inside it, `Inline` runs each statement right where it is asked for.
//! The transaction's future never waits for anything but its statements, so it is driven to
//! completion there. On a current-thread runtime (some tests) `block_in_place` is not
//! available and the statements take their hops as before.

use std::cell::Cell;
use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use diesel_async::sync_connection_wrapper::SpawnBlocking;
use futures_util::future::BoxFuture;
use tokio::runtime::{Handle, RuntimeFlavor};

thread_local! {
    /// Whether statements asked for on this thread run right here (inside `in_one_hop`).
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// The SQLite connections' runtime: a hop to tokio's blocking pool per statement, or, inside
/// `in_one_hop`, the statement run in place.
pub(crate) struct Inline(Handle);

impl SpawnBlocking for Inline {
    fn spawn_blocking<'a, R>(
        &mut self,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> BoxFuture<'a, Result<R, Box<dyn Error + Send + Sync + 'static>>>
    where
        R: Send + 'static,
    {
        if INLINE.get() {
            let value = task();
            return Box::pin(std::future::ready(Ok(value)));
        }
        Box::pin(Hop {
            task: Some(self.0.spawn_blocking(task)),
            handle: self.0.clone(),
        })
    }

    fn get_runtime() -> Self {
        Self(Handle::try_current().expect("SQLite connections are made inside a tokio runtime"))
    }
}

/// A statement on the blocking pool. Dropped before it finished (the caller was cancelled),
/// it waits for the statement: the connection goes back to the pool only once nothing runs on
/// it (what diesel-async's own runtime does).
struct Hop<R> {
    task: Option<tokio::task::JoinHandle<R>>,
    handle: Handle,
}

impl<R> Future for Hop<R> {
    type Output = Result<R, Box<dyn Error + Send + Sync + 'static>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let task = self.task.as_mut().expect("polled after completion");
        match Pin::new(task).poll(cx) {
            Poll::Ready(done) => {
                self.task = None;
                Poll::Ready(done.map_err(Box::from))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<R> Drop for Hop<R> {
    fn drop(&mut self) {
        // On a current-thread runtime the statement finishes on its own: nothing else runs on
        // the connection before this task gives it back.
        if let Some(task) = self.task.take()
            && !task.is_finished()
            && handle_allows_blocking(&self.handle)
        {
            let handle = self.handle.clone();
            tokio::task::block_in_place(move || drop(handle.block_on(task)));
        }
    }
}

fn handle_allows_blocking(handle: &Handle) -> bool {
    matches!(handle.runtime_flavor(), RuntimeFlavor::MultiThread)
}

/// Runs `work` (a SQLite transaction on a pooled connection) on this thread in one go: its
/// statements run in place, with no hop per statement. Falls back to awaiting `work` (a hop per
/// statement) on a current-thread runtime.
pub(crate) async fn in_one_hop<F: Future>(work: F) -> F::Output {
    let handle = Handle::current();
    if !handle_allows_blocking(&handle) {
        return work.await;
    }
    tokio::task::block_in_place(|| {
        let _inline = InlineScope::enter();
        handle.block_on(work)
    })
}

/// Statements run in place while this lives (also when the work panics).
struct InlineScope {
    was: bool,
}

impl InlineScope {
    fn enter() -> Self {
        Self {
            was: INLINE.replace(true),
        }
    }
}

impl Drop for InlineScope {
    fn drop(&mut self) {
        INLINE.set(self.was);
    }
}

/// `BEGIN IMMEDIATE`, `f`, then commit, or roll back if `f` failed (diesel-async has this for
/// its own runtime only). Inside `in_one_hop` nothing can cancel it half-way, so a connection
/// never goes back to the pool with a transaction left open.
pub(crate) async fn immediate_transaction<R, E, F>(
    conn: &mut super::SqliteConn,
    f: F,
) -> Result<R, E>
where
    F: AsyncFnOnce(&mut super::SqliteConn) -> Result<R, E>,
    E: From<diesel::result::Error>,
{
    use diesel::connection::AnsiTransactionManager;
    use diesel_async::TransactionManager;
    use diesel_async::sync_connection_wrapper::SyncTransactionManagerWrapper as Manager;
    conn.spawn_blocking(|inner| {
        AnsiTransactionManager::begin_transaction_sql(inner, "BEGIN IMMEDIATE")
    })
    .await?;
    match f(&mut *conn).await {
        Ok(value) => {
            Manager::<AnsiTransactionManager>::commit_transaction(conn).await?;
            Ok(value)
        }
        Err(err) => {
            Manager::<AnsiTransactionManager>::rollback_transaction(conn).await?;
            Err(err)
        }
    }
}
