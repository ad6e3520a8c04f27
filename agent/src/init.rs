//! The container init: what `agora container-init DIR` runs, in a fresh
//! process of its own, outside the agent's async runtime (fork and tokio do
//! not mix; youki and runc re-exec themselves the same way).
//!
//! Three processes per container:
//!
//! 1. the **supervisor** (this process): stays in the host's namespaces and
//!    outside the container's cgroup, forwards signals to the container, and
//!    records how it ended in `DIR/exit_status` — so the agent learns the
//!    outcome even if it was restarted meanwhile;
//! 2. **pid 1** of the new pid namespace: joins the cgroup, takes its own
//!    mount namespace (private `/proc`, optional `pivot_root` into an image),
//!    sets the hostname, then reaps zombies and forwards signals;
//! 3. the task's command, `sh -c`.
//!
//! The agent hands the init a *start report* pipe as its standard input.
//! Every process holds it close-on-exec: a set-up failure is written to it
//! (then the process exits), and the agent reads end-of-file exactly when
//! the task's `exec` succeeded — so `TASK_RUNNING` means the command runs in
//! its container, and a failed set-up is a launch failure with its cause.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, chdir, execve, fork, pivot_root, sethostname};
use serde::{Deserialize, Serialize};

use crate::containerizer::Exit;
use crate::image::RootfsSpec;

/// Everything the init needs, written by the containerizer as
/// `DIR/init.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitSpec {
    pub command: String,
    pub env: Vec<(String, String)>,
    /// The task's sandbox (working directory, or bind-mounted at
    /// `/mnt/sandbox` inside an image).
    pub sandbox: PathBuf,
    pub hostname: String,
    /// `cgroup.procs` files pid 1 writes itself into.
    pub cgroup_procs: Vec<PathBuf>,
    /// The task's image overlay to `pivot_root` into, if it has an image.
    pub rootfs: Option<RootfsSpec>,
    /// Who the command runs as (pid 1 stays root to set the container up).
    pub user: crate::containerizer::TaskUser,
    /// Host paths kept writable beside the sandbox (tasks without an image
    /// see the rest of the host read-only).
    #[serde(default)]
    pub writable: Vec<PathBuf>,
}

fn exit_from_wait(status: WaitStatus) -> Option<Exit> {
    match status {
        WaitStatus::Exited(_, code) => Some(Exit::Code(code)),
        WaitStatus::Signaled(_, signal, _) => Some(Exit::Signal(signal as i32)),
        _ => None,
    }
}

/// The file the supervisor writes the outcome to.
pub fn exit_status_path(dir: &Path) -> PathBuf {
    dir.join("exit_status")
}

/// Signals passed on to the task rather than acted on.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// The start report (see the module docs): a close-on-exec descriptor, or
/// -1 once this process has closed its copy.
static START_REPORT: AtomicI32 = AtomicI32::new(-1);

fn fail(message: String) -> ! {
    let _ = writeln!(std::io::stderr(), "agora container-init: {message}");
    let fd = START_REPORT.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: the descriptor stays open until `close_start_report`, and
        // this process is single-threaded.
        let report = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = nix::unistd::write(report, message.as_bytes());
    }
    std::process::exit(127)
}

/// Moves the start report off standard input to a close-on-exec descriptor,
/// and gives the container `/dev/null` as its standard input.
fn take_start_report() {
    if let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned() {
        START_REPORT.store(fd.into_raw_fd(), Ordering::SeqCst);
    }
    match File::open("/dev/null") {
        Ok(null) => {
            if let Err(e) = nix::unistd::dup2_stdin(null) {
                fail(format!("replacing stdin with /dev/null: {e}"));
            }
        }
        Err(e) => fail(format!("opening /dev/null: {e}")),
    }
}

/// This process's copy of the start report is no longer needed: the
/// agent's end-of-file then waits only for the others.
fn close_start_report() {
    let fd = START_REPORT.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: the descriptor came from `into_raw_fd` and nothing else
        // owns it; the swap above makes this the only close.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// Runs the supervisor for the container described in `dir`; returns the
/// process exit code.
pub fn container_init_main(dir: &Path) -> i32 {
    take_start_report();
    let spec_path = dir.join("init.json");
    let spec: InitSpec = match std::fs::read(&spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => fail(format!("reading {}: {e}", spec_path.display())),
    };
    // Signals are taken synchronously with sigwait, in every process below.
    let signals = handled_signals();
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None) {
        fail(format!("blocking signals: {e}"));
    }
    // A new pid namespace applies to the children of the caller; uts and ipc
    // to the caller, harmlessly: the supervisor uses neither.
    if let Err(e) =
        unshare(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC)
    {
        fail(format!("unshare(pid, uts, ipc): {e}"));
    }
    let (status_read, status_write) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => fail(format!("pipe: {e}")),
    };
    // SAFETY: this process is single-threaded (a fresh exec of the agora
    // binary that has not started a runtime), so the child may run any code.
    match unsafe { fork() } {
        Err(e) => fail(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            drop(status_read);
            pid_one(&spec, status_write, &signals)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(status_write);
            close_start_report();
            supervise(dir, child, status_read, &signals)
        }
    }
}

fn supervise(dir: &Path, pid_one: Pid, status_read: OwnedFd, signals: &SigSet) -> i32 {
    let exit = loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => match waitpid(pid_one, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => continue,
                Ok(status) => break exit_from_wait(status),
            },
            Ok(signal) => {
                let _ = kill(pid_one, signal);
            }
            Err(_) => continue,
        }
    };
    // Pid 1 reports the task's own outcome; if it was killed before it
    // could (the cgroup was killed), its own death is the outcome.
    let mut reported = String::new();
    let _ = File::from(status_read).read_to_string(&mut reported);
    let exit = Exit::decode(&reported)
        .or(exit)
        .unwrap_or(Exit::Signal(Signal::SIGKILL as i32));
    let path = exit_status_path(dir);
    let tmp = dir.join("exit_status.tmp");
    if std::fs::write(&tmp, exit.encode())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .is_err()
    {
        let _ = writeln!(
            std::io::stderr(),
            "agora container-init: cannot record the exit status in {}",
            path.display()
        );
    }
    match exit {
        Exit::Code(c) => c,
        Exit::Signal(s) => 128 + s,
    }
}

fn pid_one(spec: &InitSpec, status_write: OwnedFd, signals: &SigSet) -> ! {
    for file in &spec.cgroup_procs {
        if let Err(e) = std::fs::write(file, b"0") {
            fail(format!("joining cgroup {}: {e}", file.display()));
        }
    }
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNS) {
        fail(format!("unshare(mount): {e}"));
    }
    // Nothing mounted here propagates back to the host.
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        fail(format!("making / private: {e}"));
    }
    if let Err(e) = sethostname(&spec.hostname) {
        fail(format!("sethostname({}): {e}", spec.hostname));
    }
    let workdir = match &spec.rootfs {
        Some(rootfs) => {
            enter_rootfs(rootfs, &spec.sandbox, &spec.writable);
            PathBuf::from("/mnt/sandbox")
        }
        None => {
            let mut writable = vec![spec.sandbox.clone()];
            writable.extend(spec.writable.iter().cloned());
            read_only_host(&writable);
            private_tmp(&writable);
            spec.sandbox.clone()
        }
    };
    private_dev();
    // A /proc that shows this pid namespace only.
    if let Err(e) = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        fail(format!("mounting /proc: {e}"));
    }
    if let Err(e) = chdir(&workdir) {
        fail(format!("chdir({}): {e}", workdir.display()));
    }
    let args = match crate::containerizer::shell_args(&spec.command, Path::new(".")) {
        Ok(args) => args,
        Err(e) => fail(format!("writing the command to the sandbox: {e}")),
    };
    let argv: Vec<CString> = std::iter::once(c("/bin/sh"))
        .chain(args.iter().map(|a| c(a)))
        .collect();
    let mut env: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| c(&format!("{k}={v}")))
        .collect();
    if !spec.env.iter().any(|(k, _)| k == "PATH") {
        env.push(c(
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ));
    }
    let filter = crate::confine::default_filter().unwrap_or_else(|e| fail(e));
    // SAFETY: still single-threaded (see container_init_main).
    let task = match unsafe { fork() } {
        Err(e) => fail(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            drop(status_write);
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            become_user(&spec.user);
            // Last, so the set-up above was not filtered.
            if let Err(e) = crate::confine::apply(&filter) {
                fail(e);
            }
            let e = execve(&argv[0], &argv, &env).err();
            fail(format!("exec /bin/sh: {e:?}"))
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    close_start_report();
    // Init: reap every zombie, pass signals on to the task, end with it.
    let exit = loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                let mut task_exit = None;
                loop {
                    match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(status) => {
                            if status.pid() == Some(task) {
                                task_exit = exit_from_wait(status);
                            }
                        }
                    }
                }
                if let Some(exit) = task_exit {
                    break exit;
                }
            }
            Ok(signal) => {
                let _ = kill(task, signal);
            }
            Err(_) => continue,
        }
    };
    let mut out = File::from(status_write);
    let _ = out.write_all(exit.encode().as_bytes());
    let _ = out.as_fd();
    // Leaving ends the namespace: the kernel kills whatever the task left.
    std::process::exit(0)
}

/// Mounts the task's overlay of its image and `pivot_root`s into it, with
/// the sandbox bind-mounted at `/mnt/sandbox`.
fn enter_rootfs(spec: &RootfsSpec, sandbox: &Path, volumes: &[PathBuf]) {
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        spec.lower.display(),
        spec.upper.display(),
        spec.work.display()
    );
    if let Err(e) = mount(
        Some("overlay"),
        &spec.target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    ) {
        fail(format!(
            "mounting the image overlay at {}: {e}",
            spec.target.display()
        ));
    }
    let rootfs = spec.target.as_path();
    let bind = |src: &Path, dst: &Path| {
        mount(
            Some(src),
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap_or_else(|e| {
            fail(format!(
                "bind-mounting {} at {}: {e}",
                src.display(),
                dst.display()
            ))
        })
    };
    let mnt_sandbox = rootfs.join("mnt/sandbox");
    if let Err(e) = std::fs::create_dir_all(&mnt_sandbox) {
        fail(format!("creating {}: {e}", mnt_sandbox.display()));
    }
    bind(sandbox, &mnt_sandbox);
    // Declared volumes appear at their own paths inside the image.
    for volume in volumes {
        let inside = rootfs.join(volume.strip_prefix("/").unwrap_or(volume));
        mount_point(&inside, volume.is_dir());
        bind(volume, &inside);
    }
    for dir in ["proc", "tmp", "dev", ".old_root"] {
        let _ = std::fs::create_dir_all(rootfs.join(dir));
    }
    let old = rootfs.join(".old_root");
    if let Err(e) = pivot_root(rootfs, &old) {
        fail(format!("pivot_root({}): {e}", rootfs.display()));
    }
    if let Err(e) = chdir("/") {
        fail(format!("chdir(/): {e}"));
    }
    if let Err(e) = umount2("/.old_root", MntFlags::MNT_DETACH) {
        fail(format!("detaching the old root: {e}"));
    }
    let _ = std::fs::remove_dir("/.old_root");
}

/// A `/dev` of the container's own: a small tmpfs with the devices of
/// [`crate::confine::DEVICES`], new pseudo-terminals, and `/dev/shm`. The
/// host's disks and the rest are not there (and, on cgroup v1, not
/// usable either).
fn private_dev() {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let tmpfs = |target: &str, flags: MsFlags, options: &str| {
        if let Err(e) = mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(options)) {
            fail(format!("mounting a tmpfs at {target}: {e}"));
        }
    };
    let _ = std::fs::create_dir_all("/dev");
    tmpfs(
        "/dev",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "mode=755,size=65536k",
    );
    for (major, minor, name) in crate::confine::DEVICES {
        let path = format!("/dev/{name}");
        if let Err(e) = mknod(
            path.as_str(),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        ) {
            fail(format!("making {path}: {e}"));
        }
        // mknod honours the umask: make sure everyone may use them.
        let _ =
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666));
    }
    for dir in ["/dev/pts", "/dev/shm"] {
        let _ = std::fs::create_dir(dir);
    }
    if let Err(e) = mount(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    ) {
        fail(format!("mounting /dev/pts: {e}"));
    }
    tmpfs(
        "/dev/shm",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "mode=1777,size=65536k",
    );
    for (link, target) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
}

/// Makes `target` something to bind-mount on: a directory, or an empty
/// file when what goes there is a file.
fn mount_point(target: &Path, directory: bool) {
    let made = if directory {
        std::fs::create_dir_all(target)
    } else {
        target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)
                    .map(drop)
            })
    };
    if let Err(e) = made {
        fail(format!(
            "creating the mount point {}: {e}",
            target.display()
        ));
    }
}

/// A `/tmp` of the task's own (a tmpfs, charged to the task's memory)
/// instead of the host's. What must stay reachable below the host's `/tmp`
/// (an agent whose data directory is there: the sandbox, volumes) is
/// opened first and bound again at its path inside the new `/tmp`.
fn private_tmp(keep: &[PathBuf]) {
    use std::os::fd::AsRawFd;
    let hidden: Vec<(&PathBuf, File)> = keep
        .iter()
        .filter(|p| p.starts_with("/tmp"))
        .map(|p| match File::open(p) {
            Ok(f) => (p, f),
            Err(e) => fail(format!("opening {}: {e}", p.display())),
        })
        .collect();
    if let Err(e) = mount(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    ) {
        fail(format!("mounting a private /tmp: {e}"));
    }
    for (path, dir) in hidden {
        // Asked of the open descriptor: the path itself is hidden now.
        mount_point(path, dir.metadata().is_ok_and(|m| m.is_dir()));
        let source = format!("/proc/self/fd/{}", dir.as_raw_fd());
        if let Err(e) = mount(
            Some(source.as_str()),
            path.as_path(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ) {
            fail(format!("binding {} again: {e}", path.display()));
        }
    }
}

/// The host's filesystems, read-only in this mount namespace, but for
/// `writable` (the sandbox and declared volumes), `/dev`, `/proc` and `/sys`.
fn read_only_host(writable: &[PathBuf]) {
    // Each writable place becomes a mount of its own, which the read-only
    // remounts below leave alone.
    for path in writable {
        if let Err(e) = mount(
            Some(path.as_path()),
            path.as_path(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ) {
            fail(format!("binding {} writable: {e}", path.display()));
        }
    }
    let mountinfo = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(m) => m,
        Err(e) => fail(format!("reading /proc/self/mountinfo: {e}")),
    };
    let kept = |point: &Path| {
        writable.iter().any(|w| point.starts_with(w))
            || ["/dev", "/proc", "/sys"]
                .iter()
                .any(|p| point.starts_with(p))
    };
    for point in mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_point)
    {
        if kept(&point) {
            continue;
        }
        let remounted = mount(
            None::<&str>,
            point.as_path(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        );
        // The root must become read-only; a mount that refuses (an odd
        // filesystem) stays as the host has it.
        if let Err(e) = remounted
            && point == Path::new("/")
        {
            fail(format!("making / read-only: {e}"));
        }
    }
}

/// `/proc/self/mountinfo` writes spaces and the like as `\040` octal.
fn unescape_mount_point(raw: &str) -> PathBuf {
    let mut out = Vec::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&raw[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&out),
    ))
}

/// Drops to the task's user for good: its group alone, then its uid (which,
/// for anyone but root, leaves no capabilities; root keeps a small set),
/// and no way back up through set-uid programs.
fn become_user(user: &crate::containerizer::TaskUser) {
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    let root = user.uid == 0;
    if let Err(e) = crate::confine::narrow_bounding_set(root) {
        fail(e);
    }
    let gid = Gid::from_raw(user.gid);
    if let Err(e) = setgroups(&[gid]) {
        fail(format!("setgroups({}): {e}", user.gid));
    }
    if let Err(e) = setgid(gid) {
        fail(format!("setgid({}): {e}", user.gid));
    }
    if let Err(e) = setuid(Uid::from_raw(user.uid)) {
        fail(format!("setuid({} = {}): {e}", user.uid, user.name));
    }
    if root && let Err(e) = crate::confine::limit_root_capabilities() {
        fail(e);
    }
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        fail(format!("no_new_privs: {e}"));
    }
}

fn c(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_round_trips() {
        for exit in [Exit::Code(0), Exit::Code(3), Exit::Signal(9)] {
            assert_eq!(Exit::decode(&exit.encode()), Some(exit));
        }
        assert_eq!(Exit::decode("garbage"), None);
        assert_eq!(Exit::decode(""), None);
    }
}
