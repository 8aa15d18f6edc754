//! Bulk work that must not take CPU from requests (the defragment's copy,
//! the snapshot file) runs on a thread of its own at the scheduler's idle
//! policy (Linux `SCHED_IDLE`), so that it uses only the CPU time that the
//! raft loop, the apply stage and the client connections leave. Measured
//! beside nice 19 (bench/defrag.sh, BENCHMARKS.md), it kept put p99 during
//! a defragment lower. An unprivileged thread cannot raise its policy
//! back, hence a fresh thread per step rather than a pooled one. Locks that
//! requests also take (the writer lock, the backend's open batch) stay on
//! the caller's thread, at normal priority.

/// Runs `f` on a new thread at the lowest CPU priority the OS offers and
/// returns its result. Where the priority cannot be had, `f` runs at normal
/// priority (logged): slower requests beat a defragment that cannot run.
///
/// # Errors
/// The thread could not be started.
pub fn run_low<T: Send>(what: &'static str, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|s| {
        let spawned = std::thread::Builder::new()
            .name(format!("{what}-low"))
            .spawn_scoped(s, || {
                lower_this_thread(what);
                f()
            });
        match spawned?.join() {
            Ok(v) => Ok(v),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// `SCHED_IDLE` (and the highest nice value) for the calling thread, for
/// good: call it only on a thread made for the work. Best effort: where
/// the system refuses, a warning and the default priority.
pub fn lower_this_thread(what: &str) {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadSchedulePolicy,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        if let Err(e) = set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Min,
            idle,
        ) {
            tracing::warn!(task = what, error = ?e, "could not lower the thread's CPU priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
            .map_err(|e| tracing::warn!(task = what, error = ?e, "could not lower the thread's CPU priority"));
    }
}

#[cfg(test)]
mod tests {
    /// The work runs on another thread at the idle policy and its result
    /// comes back; the caller's own thread keeps its policy.
    #[test]
    #[cfg(target_os = "linux")]
    fn work_runs_at_idle_priority_and_the_caller_keeps_its_own() {
        use thread_priority::unix::{
            thread_native_id, thread_schedule_policy, NormalThreadSchedulePolicy,
            ThreadSchedulePolicy,
        };
        let caller = thread_native_id();
        let (policy, thread) = super::run_low("test", || {
            (
                thread_schedule_policy().expect("policy"),
                thread_native_id(),
            )
        })
        .expect("thread");
        assert_eq!(
            policy,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
        );
        assert_ne!(thread, caller);
        assert_eq!(
            thread_schedule_policy().expect("policy"),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other)
        );
    }

    #[test]
    #[should_panic(expected = "boom")]
    fn a_panic_reaches_the_caller() {
        let _ = super::run_low("test", || panic!("boom"));
    }
}
