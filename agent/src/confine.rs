//! What a task's process may do beyond its user's file permissions:
//! capabilities (none for other users; a small default set for root, as
//! Docker's), a seccomp filter refusing what containers have no business
//! calling, and the devices it may open. Applied by the container init
//! (see [`crate::init`]) just before the command's `exec`.

use std::collections::BTreeMap;

use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// What a task running as root keeps (Docker's default set, less
/// `MKNOD`: device nodes are the agent's business).
pub const ROOT_CAPABILITIES: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_KILL,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETPCAP,
    Capability::CAP_SETFCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_NET_RAW,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_AUDIT_WRITE,
];

/// Narrows the bounding set before the user changes: to nothing for a
/// task that will not be root (no set-uid program can bring a capability
/// back), to [`ROOT_CAPABILITIES`] for one that will. Needs `CAP_SETPCAP`,
/// so it runs while the process is still root.
pub fn narrow_bounding_set(will_be_root: bool) -> Result<(), String> {
    let keep: CapsHashSet = if will_be_root {
        ROOT_CAPABILITIES.iter().copied().collect()
    } else {
        CapsHashSet::new()
    };
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| format!("dropping {cap} from the bounding set: {e}"))?;
        }
    }
    Ok(())
}

/// After `setuid(0)` a root task still holds every capability: this
/// leaves it [`ROOT_CAPABILITIES`] only (effective, permitted, and none
/// inherited or ambient). Other users lost theirs with the `setuid`.
pub fn limit_root_capabilities() -> Result<(), String> {
    let keep: CapsHashSet = ROOT_CAPABILITIES.iter().copied().collect();
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| format!("clearing ambient capabilities: {e}"))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| format!("clearing inheritable capabilities: {e}"))?;
    caps::set(None, CapSet::Effective, &keep)
        .map_err(|e| format!("setting effective capabilities: {e}"))?;
    caps::set(None, CapSet::Permitted, &keep)
        .map_err(|e| format!("setting permitted capabilities: {e}"))?;
    Ok(())
}

/// System calls a task is refused (`EPERM`): mounting and namespaces (a
/// way out of the container), loading kernels and modules, tracing other
/// processes, keyrings, BPF, and the clock and other host-wide switches.
/// Names, for messages and tests, with their numbers.
pub const BLOCKED_SYSCALLS: &[(&str, i64)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("syslog", libc::SYS_syslog),
    ("quotactl", libc::SYS_quotactl),
    ("vhangup", libc::SYS_vhangup),
];

fn target_arch() -> Result<TargetArch, String> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err("seccomp: this architecture has no filter".into())
    }
}

/// The default filter, compiled: everything is allowed but
/// [`BLOCKED_SYSCALLS`]. Built before the fork (it allocates).
pub fn default_filter() -> Result<BpfProgram, String> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = BLOCKED_SYSCALLS
        .iter()
        .map(|(_, number)| (*number, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target_arch()?,
    )
    .map_err(|e| format!("seccomp filter: {e}"))?;
    BpfProgram::try_from(filter).map_err(|e| format!("compiling the seccomp filter: {e}"))
}

/// Installs `filter` on this process (needs `no_new_privs` unless root;
/// the init sets it first). It holds across `exec` and is inherited.
pub fn apply(filter: &BpfProgram) -> Result<(), String> {
    seccompiler::apply_filter(filter).map_err(|e| format!("installing the seccomp filter: {e}"))
}

/// The character devices a task may use, as `(major, minor, name, mode)`:
/// its `/dev` has these and nothing else, and on cgroup v1 the devices
/// controller allows these alone.
pub const DEVICES: &[(u64, u64, &str)] = &[
    (1, 3, "null"),
    (1, 5, "zero"),
    (1, 7, "full"),
    (1, 8, "random"),
    (1, 9, "urandom"),
    (5, 0, "tty"),
];

/// The lines for a v1 devices cgroup's `devices.allow` (after denying
/// everything): [`DEVICES`], and pseudo-terminals.
pub fn device_cgroup_rules() -> Vec<String> {
    let mut rules: Vec<String> = DEVICES
        .iter()
        .map(|(major, minor, _)| format!("c {major}:{minor} rwm"))
        .collect();
    rules.push("c 5:2 rwm".into()); // /dev/ptmx
    rules.push("c 136:* rwm".into()); // /dev/pts/*
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_names_what_it_blocks() {
        let filter = default_filter().expect("compiles");
        assert!(!filter.is_empty());
        let names: Vec<&str> = BLOCKED_SYSCALLS.iter().map(|(n, _)| *n).collect();
        for must in [
            "mount",
            "kexec_load",
            "init_module",
            "ptrace",
            "unshare",
            "bpf",
        ] {
            assert!(names.contains(&must), "{must}");
        }
        assert!(!ROOT_CAPABILITIES.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!ROOT_CAPABILITIES.contains(&Capability::CAP_MKNOD));
        assert!(device_cgroup_rules().contains(&"c 1:3 rwm".to_string()));
    }

    /// In a child process (the filter cannot be taken off again): a
    /// filtered `mount` fails with EPERM even for root.
    #[test]
    #[allow(unsafe_code)]
    fn a_filtered_process_cannot_mount() {
        let filter = default_filter().expect("compiles");
        // SAFETY: the child only makes system calls and exits; it touches
        // no lock another thread of the test binary might hold.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                let code = match apply(&filter) {
                    Err(_) => 2,
                    Ok(()) => {
                        // SAFETY: a plain system call with null arguments.
                        let r = unsafe {
                            libc::mount(
                                std::ptr::null(),
                                std::ptr::null(),
                                std::ptr::null(),
                                0,
                                std::ptr::null(),
                            )
                        };
                        let errno = std::io::Error::last_os_error().raw_os_error();
                        if r == -1 && errno == Some(libc::EPERM) {
                            0
                        } else {
                            1
                        }
                    }
                };
                // SAFETY: ends the forked child without running the test
                // harness's exit handlers.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).expect("wait");
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
