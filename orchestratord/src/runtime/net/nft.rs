//! libnftables, in-process. One `nft` process per change costs about 3.4 ms (fork, exec,
//! library start-up) while the kernel transaction itself takes 25-65 us (PERFORMANCE.md),
//! so the daemon loads `libnftables.so.1` (shipped by Debian's `nftables` package, the same
//! library `nft` itself uses) with dlopen and hands it whole transactions as text: one
//! `nft_run_cmd_from_buffer` call is one atomic kernel transaction.
//!
//! The library is opened at run time, not linked, so building needs no -dev package and a
//! host without nftables gets a clear error instead of a daemon that does not start.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot load libnftables.so.1 (install the nftables package): {0}")]
    Load(String),
    #[error("cannot create an nftables context")]
    Context,
    #[error("the transaction has a NUL byte")]
    Nul,
    #[error("nft: {0}")]
    Command(String),
}

type NewFn = unsafe extern "C" fn(u32) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type CtxIntFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type GetBufFn = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
type SetFlagsFn = unsafe extern "C" fn(*mut c_void, u32);

/// `NFT_CTX_OUTPUT_JSON` of nftables/libnftables.h.
const OUTPUT_JSON: u32 = 1 << 4;

#[derive(Debug, Clone, Copy)]
struct Lib {
    new: NewFn,
    free: FreeFn,
    buffer_output: CtxIntFn,
    buffer_error: CtxIntFn,
    get_output: GetBufFn,
    get_error: GetBufFn,
    run: RunFn,
    set_output_flags: SetFlagsFn,
}

fn load() -> Result<Lib, NftError> {
    let name = c"libnftables.so.1";
    // SAFETY: dlopen with a NUL-terminated name; the handle is never closed, so symbols
    // stay valid for the life of the process.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local string or null.
        let msg = unsafe { libc::dlerror() };
        let msg = if msg.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: non-null dlerror strings are NUL-terminated.
            unsafe { CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(NftError::Load(msg));
    }
    let sym = |s: &CStr| -> Result<*mut c_void, NftError> {
        // SAFETY: dlsym on a valid handle with a NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, s.as_ptr()) };
        if p.is_null() {
            Err(NftError::Load(format!("symbol {s:?} missing")))
        } else {
            Ok(p)
        }
    };
    // SAFETY: each symbol is transmuted to the signature libnftables.h declares for it.
    unsafe {
        Ok(Lib {
            new: std::mem::transmute::<*mut c_void, NewFn>(sym(c"nft_ctx_new")?),
            free: std::mem::transmute::<*mut c_void, FreeFn>(sym(c"nft_ctx_free")?),
            buffer_output: std::mem::transmute::<*mut c_void, CtxIntFn>(sym(
                c"nft_ctx_buffer_output",
            )?),
            buffer_error: std::mem::transmute::<*mut c_void, CtxIntFn>(sym(
                c"nft_ctx_buffer_error",
            )?),
            get_output: std::mem::transmute::<*mut c_void, GetBufFn>(sym(
                c"nft_ctx_get_output_buffer",
            )?),
            get_error: std::mem::transmute::<*mut c_void, GetBufFn>(sym(
                c"nft_ctx_get_error_buffer",
            )?),
            run: std::mem::transmute::<*mut c_void, RunFn>(sym(c"nft_run_cmd_from_buffer")?),
            set_output_flags: std::mem::transmute::<*mut c_void, SetFlagsFn>(sym(
                c"nft_ctx_output_set_flags",
            )?),
        })
    }
}

struct Ctx(*mut c_void);

// SAFETY: a libnftables context is plain heap state with no thread affinity; every use
// goes through the Mutex in `Nft`, so it is never used from two threads at once.
unsafe impl Send for Ctx {}

/// One libnftables context, kept for the life of the firewall, in the network namespace of
/// the thread that created it (its netlink socket is opened by `nft_ctx_new`).
///
/// Why not a fresh context per call: closing an nfnetlink socket waits for the kernel to
/// finish destroying what the last transaction removed, an RCU grace period (about 10 ms:
/// `nft_rcv_nl_event` flushes the destroy work on NETLINK_URELEASE), so every change that
/// flushed a chain paid that wait. A kept context is not a stale one: before each command
/// libnftables compares its cache with the kernel's ruleset generation and refetches when
/// anyone (the admin's own `nft` included) changed the ruleset.
pub struct Nft {
    lib: Lib,
    /// The context; the lock also serializes this daemon's transactions (the kernel would
    /// too; this keeps error messages attributable).
    ctx: Mutex<Ctx>,
}

impl std::fmt::Debug for Nft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nft")
    }
}

impl Nft {
    pub fn new() -> Result<Nft, NftError> {
        let lib = load()?;
        // SAFETY: nft_ctx_new(NFT_CTX_DEFAULT) returns an owned context or null.
        let ctx = unsafe { (lib.new)(0) };
        if ctx.is_null() {
            return Err(NftError::Context);
        }
        // SAFETY: ctx is valid; output and errors go to buffers the context owns.
        unsafe {
            (lib.buffer_output)(ctx);
            (lib.buffer_error)(ctx);
        }
        Ok(Nft {
            lib,
            ctx: Mutex::new(Ctx(ctx)),
        })
    }

    /// Runs `text` as one transaction; returns its (JSON, when `json`) output.
    pub fn run(&self, text: &str, json: bool) -> Result<String, NftError> {
        let c = CString::new(text).map_err(|_| NftError::Nul)?;
        let ctx = self.ctx.lock().unwrap_or_else(|p| p.into_inner());
        let lib = self.lib;
        // SAFETY: ctx is valid while self lives and used under the lock only; c outlives
        // the call; both buffers are read (which also rewinds them for the next call) and
        // copied before the lock is released.
        unsafe {
            (lib.set_output_flags)(ctx.0, if json { OUTPUT_JSON } else { 0 });
            let rc = (lib.run)(ctx.0, c.as_ptr());
            let out = cstr((lib.get_output)(ctx.0));
            let err = cstr((lib.get_error)(ctx.0));
            if rc != 0 {
                Err(NftError::Command(err.trim().to_string()))
            } else {
                Ok(out)
            }
        }
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        let ctx = self.ctx.get_mut().unwrap_or_else(|p| p.into_inner());
        // SAFETY: created by nft_ctx_new in `new`, freed exactly once, here.
        unsafe { (self.lib.free)(ctx.0) };
    }
}

/// Copies a possibly-null C string.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string valid for the call.
unsafe fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: per the contract above.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}
