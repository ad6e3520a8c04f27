//! Thread priorities. Every message goes through the core, so on a busy
//! machine it goes first; operators' reads come next, before the rest of
//! the process (agent sessions, framework streams) and whatever shares the
//! machine. Raised where allowed (root, or `CAP_SYS_NICE`); elsewhere a
//! thread keeps the process's priority.

/// The core's nice value. Preempted on a loaded 2-core machine, its turns
/// stretched by a scheduler slice at a time, and every reader and task
/// waited with it.
pub const CORE_NICE: libc::c_int = -10;

/// Operators' connections' (`serve::OperatorThread`): a woken reader runs
/// before the cluster's traffic, and yields to the core (about a third of
/// the CPU the core gets when both want it).
pub const OPERATOR_NICE: libc::c_int = -5;

/// Gives the calling thread the nice value `nice` where allowed.
#[allow(unsafe_code)]
pub fn raise_this_thread(nice: libc::c_int) {
    // SAFETY: both calls act on this thread only and take no pointers.
    let raised = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if raised != 0 {
        tracing::debug!(
            nice,
            "a thread keeps the process's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}
