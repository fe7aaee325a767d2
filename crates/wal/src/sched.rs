//! Asking the Linux scheduler to wake the WAL's committer threads promptly.
//!
//! A committer sleeps in `fdatasync` and, when the disk is done, has a few microseconds of work
//! (complete the waiters, gather the next batch). On a machine whose CPUs are busy with other
//! work, the EEVDF scheduler (Linux 6.6+) lets the running task finish its time slice before
//! the woken committer runs: measured on the 2-vCPU test machine (docs/wal.md), a 304-byte
//! `write` + `fdatasync` then takes ~3.9 ms of which ~3.7 ms is run-queue wait
//! (`/proc/thread-self/schedstat`), while the disk took ~0.2 ms. Since Linux 6.12 a task may
//! request a shorter slice (`sched_attr.sched_runtime` for `SCHED_OTHER`), and a task with a
//! shorter slice preempts on wake-up: the same sync then takes ~0.15 ms. This does not raise the
//! thread's CPU share (its weight is unchanged); it only trades longer slices for earlier
//! starts, which suits a thread that runs for microseconds at a time.

/// Requests a time slice of `slice_micros` for the calling thread. Best effort: on kernels or
/// systems without per-task slices the request fails or is ignored, and nothing else changes.
pub fn request_time_slice(slice_micros: u32) {
    #[cfg(target_os = "linux")]
    linux::request_time_slice(slice_micros);
    #[cfg(not(target_os = "linux"))]
    let _ = slice_micros;
}

#[cfg(target_os = "linux")]
mod linux {
    /// `struct sched_attr` of `sched_setattr(2)` (`SCHED_ATTR_SIZE_VER1`, 56 bytes).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
        sched_util_min: u32,
        sched_util_max: u32,
    }

    const SCHED_OTHER: u32 = 0;

    pub fn request_time_slice(slice_micros: u32) {
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            sched_policy: SCHED_OTHER,
            sched_flags: 0,
            sched_nice: 0,
            sched_priority: 0,
            sched_runtime: u64::from(slice_micros) * 1000,
            sched_deadline: 0,
            sched_period: 0,
            sched_util_min: 0,
            sched_util_max: 0,
        };
        // SAFETY: `attr` is a valid, fully initialised `struct sched_attr` whose `size` field
        // says how much of it the kernel may read; pid 0 is the calling thread; flags are 0.
        let result =
            unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0u32) };
        if result != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "the kernel refused a shorter time slice for the WAL committer thread"
            );
        }
    }
}
