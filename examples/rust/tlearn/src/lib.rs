//! Safe Rust bindings of libtlearn: transfer learning on the CPU behind a stable C ABI.
//!
//! [`Model`], [`FreezePolicy`] and [`Optimizer`] own their C handles and free them on drop.
//! Data goes in and out as `f32` slices (NCHW, row-major) and `i32` label slices; a slice of
//! the wrong length is an [`Error`] before the C library sees it. Every failing C call
//! becomes an [`Error`] carrying its [`ErrorKind`], the status code and `tlearn_errmsg()`;
//! a training callback that stops on purpose is not an error. Rust 1.63 or newer.
//!
//! Fine-tune a pretrained model and save it:
//!
//! ```
//! # use tlearn::*;
//! # let dir = std::env::temp_dir().join(format!("tlearn-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! # std::env::set_current_dir(&dir).unwrap();
//! # let mut p = Model::new(1, 8, 8).unwrap();
//! # p.add_conv2d("conv1", 4, 3, 1, 1, 1).unwrap().add_activation("relu1", Activation::Relu)
//! #  .unwrap().add_flatten("flat").unwrap().add_dense("fc1", 16).unwrap()
//! #  .add_dense("fc2", 4).unwrap();
//! # p.save("pretrained.tlc", None).unwrap();
//! # let y: Vec<i32> = (0..64).map(|i| i % 10).collect();
//! # let x: Vec<f32> = (0..64 * 64).map(|i| ((i * 7919) % 101) as f32 / 101.0).collect();
//! use tlearn::{FreezePolicy, Model, OptimKind, Optimizer};
//!
//! fn finetune(x: &[f32], y: &[i32]) -> tlearn::Result<()> {
//!     let mut model = Model::load("pretrained.tlc")?;
//!     model.replace_head("fc1", 10)?; // a new 10-class head after fc1
//!     model.apply_freeze(Some(FreezePolicy::new()?.until("fc1")?))?; // backbone stays
//!     let mut opt = Optimizer::new(OptimKind::Adam)?;
//!     opt.set_lr(1e-3)?;
//!     model.fit(&mut opt, x, y, 32, 5)?;
//!     model.save("finetuned.tlc", Some(&opt))
//! }
//! finetune(&x, &y).unwrap();
//! # let m = Model::load("finetuned.tlc").unwrap();
//! # assert_eq!(m.output_shape().unwrap().c, 10);
//! # assert!(m.layer_frozen("fc1").unwrap() && !m.layer_frozen("head").unwrap());
//! # assert_eq!(m.get_tensor("conv1.weight").unwrap(), p.get_tensor("conv1.weight").unwrap());
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```
//!
//! The library is linked with the flags of `pkg-config --libs tlearn` (tlearn-sys/build.rs).
//! Handles are `Send` but not `Sync`: one thread at a time uses a handle, as in C.

use std::any::Any;
use std::ffi::{CStr, CString};
use std::fmt;
use std::ops::ControlFlow;
use std::os::raw::{c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::ptr::{self, NonNull};

pub use tlearn_sys as sys;

/// Status codes of the C API (negative; `OK` is 0).
pub mod status {
    pub use tlearn_sys::{
        TLEARN_ECANCELED as ECANCELED, TLEARN_EFORMAT as EFORMAT, TLEARN_EINVAL as EINVAL,
        TLEARN_EIO as EIO, TLEARN_ENOMEM as ENOMEM, TLEARN_ENONFINITE as ENONFINITE,
        TLEARN_ENOTFOUND as ENOTFOUND, TLEARN_ESHAPE as ESHAPE, TLEARN_ESTATE as ESTATE,
        TLEARN_EUNSUPPORTED as EUNSUPPORTED, TLEARN_EVERSION as EVERSION, TLEARN_OK as OK,
    };
}

/// What kind of failure an [`Error`] is: one kind per TLEARN_E* status of the C API.
/// Match on it (`Error::kind()`); new kinds may be added with new library versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// TLEARN_EINVAL: an argument is invalid (NULL, out of range, wrong length, NUL byte).
    InvalidArgument,
    /// TLEARN_ENOMEM: memory could not be allocated.
    NoMemory,
    /// TLEARN_ESHAPE: shapes of layers or buffers do not fit together.
    Shape,
    /// TLEARN_ENOTFOUND: a named layer, tensor or pattern matched nothing.
    NotFound,
    /// TLEARN_EIO: the operating system refused a file operation.
    Io,
    /// TLEARN_EFORMAT: a file or buffer is corrupt, truncated or of another format.
    Format,
    /// TLEARN_EUNSUPPORTED: a valid request this build or version cannot do.
    Unsupported,
    /// TLEARN_ENONFINITE: the loss or a gradient became NaN/Inf; weights unchanged.
    NonFinite,
    /// TLEARN_ESTATE: the object is not in a state that allows the call.
    State,
    /// TLEARN_EVERSION: a file was written by an incompatible format version.
    Version,
    /// TLEARN_ECANCELED: a callback asked to stop (fit calls return Ok for that instead).
    Cancelled,
    /// A status this crate does not know (a newer library); [`Error::code`] has it.
    Unknown,
}

impl ErrorKind {
    /// The kind of a TLEARN_E* status code.
    pub fn from_code(code: i32) -> ErrorKind {
        match code {
            status::EINVAL => ErrorKind::InvalidArgument,
            status::ENOMEM => ErrorKind::NoMemory,
            status::ESHAPE => ErrorKind::Shape,
            status::ENOTFOUND => ErrorKind::NotFound,
            status::EIO => ErrorKind::Io,
            status::EFORMAT => ErrorKind::Format,
            status::EUNSUPPORTED => ErrorKind::Unsupported,
            status::ENONFINITE => ErrorKind::NonFinite,
            status::ESTATE => ErrorKind::State,
            status::EVERSION => ErrorKind::Version,
            status::ECANCELED => ErrorKind::Cancelled,
            _ => ErrorKind::Unknown,
        }
    }
}

/// A failed call: its [`ErrorKind`], the C status code and the library's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    code: i32,
    message: String,
}

impl Error {
    /// An error of status @p code (a TLEARN_E* value) with @p message, as the library
    /// would report it; for hosts that wrap their own failures in this type.
    pub fn new(code: i32, message: impl Into<String>) -> Error {
        Error { kind: ErrorKind::from_code(code), code, message: message.into() }
    }
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The negative TLEARN_E* status ([`status`]).
    pub fn code(&self) -> i32 {
        self.code
    }
    /// The detail message (tlearn_errmsg() for errors from the library).
    pub fn message(&self) -> &str {
        &self.message
    }
    /// tlearn_strerror() of the code: "invalid argument", ...
    pub fn description(&self) -> String {
        strerror(self.code)
    }
    fn invalid(message: String) -> Error {
        Error::new(status::EINVAL, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.description(), self.code, self.message)
    }
}

impl std::error::Error for Error {}

/// Result of every fallible call.
pub type Result<T> = std::result::Result<T, Error>;

fn cstr_to_string(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the library returns NUL-terminated strings valid until the next call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn check(rc: c_int) -> Result<()> {
    if rc == status::OK {
        Ok(())
    } else {
        // SAFETY: tlearn_errmsg never returns NULL; copied before any other call.
        Err(Error::new(rc, cstr_to_string(unsafe { sys::tlearn_errmsg() })))
    }
}

fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::invalid(format!("{what} {s:?} contains a NUL byte")))
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(format!("path {} contains a NUL byte", p.display())))
}

/// Short description of a status code (tlearn_strerror).
pub fn strerror(code: i32) -> String {
    cstr_to_string(unsafe { sys::tlearn_strerror(code) })
}

/// Version string of the linked library, "MAJOR.MINOR.PATCH".
pub fn version() -> String {
    cstr_to_string(unsafe { sys::tlearn_version_string() })
}

/// Which BLIS sub-configuration runs the matrix products and why (tlearn_blas_info).
pub fn blas_info() -> Result<String> {
    let mut buf = [0 as c_char; 256];
    check(unsafe { sys::tlearn_blas_info(buf.as_mut_ptr(), buf.len(), ptr::null_mut()) })?;
    Ok(cstr_to_string(buf.as_ptr()))
}

/// Version of the linked library as 0xMMmmpp00.
pub fn version_hex() -> u32 {
    unsafe { sys::tlearn_version_hex() }
}

/// A layer's output shape (channels, height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    /// Number of floats per example.
    pub fn size(&self) -> usize {
        self.c * self.h * self.w
    }
}

/// Elementwise activation functions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Relu,
    Tanh,
    Sigmoid,
    /// Exact (erf) GELU.
    Gelu,
    Relu6,
    /// Leaky ReLU with this negative slope (PyTorch's default is 0.01).
    LeakyRelu(f32),
    /// max(0, min(1, alpha * x + beta)): torch's (1/6, 0.5), ONNX's (0.2, 0.5).
    HardSigmoid(f32, f32),
    /// x * relu6(x + 3) / 6.
    HardSwish,
    /// x * sigmoid(x).
    Silu,
    /// min(max(x, lo), hi) as torch.clamp; bounds may be infinite.
    Clip(f32, f32),
    /// GELU's tanh approximation (torch's approximate='tanh').
    GeluTanh,
}

/// Operations of [`Model::add_binary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add = 1,
    Sub = 2,
    Mul = 3,
    Div = 4,
}

/// Loss functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    SoftmaxCrossEntropy = 1,
    Mse = 2,
    /// In-batch contrastive loss over cosine similarity, for [`Model::train_step_pairs`].
    Contrastive = 3,
    /// Its symmetric form (anchors -> positives and back, averaged).
    ContrastiveSymmetric = 4,
}

/// Layer kinds reported by [`Model::layer_kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Dense,
    Flatten,
    Activation,
    Conv2d,
    MaxPool2d,
    AvgPool2d,
    GlobalAvgPool,
    BatchNorm,
    Dropout,
    Add,
    Binary,
    Scale,
    Softmax,
    Concat,
    Slice,
    Reshape,
    Transpose,
    LayerNorm,
    AdaptiveAvgPool,
    Pad,
    MatMul,
    DropPath,
    Prototype,
    LoraSum,
    GradReverse,
    /// A kind newer than these bindings.
    Other(i32),
}

impl LayerKind {
    fn from_c(k: c_int) -> LayerKind {
        match k {
            1 => LayerKind::Dense,
            2 => LayerKind::Flatten,
            3 => LayerKind::Activation,
            4 => LayerKind::Conv2d,
            5 => LayerKind::MaxPool2d,
            6 => LayerKind::AvgPool2d,
            7 => LayerKind::GlobalAvgPool,
            8 => LayerKind::BatchNorm,
            9 => LayerKind::Dropout,
            10 => LayerKind::Add,
            11 => LayerKind::Binary,
            12 => LayerKind::Scale,
            13 => LayerKind::Softmax,
            14 => LayerKind::Concat,
            15 => LayerKind::Slice,
            16 => LayerKind::Reshape,
            17 => LayerKind::Transpose,
            18 => LayerKind::LayerNorm,
            19 => LayerKind::AdaptiveAvgPool,
            20 => LayerKind::Pad,
            21 => LayerKind::MatMul,
            22 => LayerKind::DropPath,
            60 => LayerKind::Prototype,
            40 => LayerKind::LoraSum,
            50 => LayerKind::GradReverse,
            other => LayerKind::Other(other),
        }
    }
}

/// Discrepancies between source and target rows ([`Model::set_discrepancy`], [`discrepancy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discrepancy {
    /// Deep CORAL: ||C_s - C_t||_F^2 / (4 d^2).
    Coral = 1,
    /// Multi-kernel Gaussian MMD^2 (DAN), bandwidths as multipliers of the mean distance.
    Mmd = 2,
}

/// The targets of one graph output for [`Model::train_step_multi`].
pub enum Target<'a> {
    /// No loss on this output for this step.
    None,
    /// int32 labels (cross-entropy); -1 means no loss for that row.
    Labels(&'a [i32]),
    /// float targets (MSE), n x the output's size.
    Values(&'a [f32]),
}

/// DANN's schedule 2 / (1 + exp(-10 p)) - 1 for training progress p in [0, 1].
pub fn dann_lambda(progress: f32) -> f32 {
    unsafe { sys::tlearn_dann_lambda(progress) }
}

/// A discrepancy between the rows of `features` (n x dim) marked by `is_target` (0 source,
/// 1 target), and its gradient w.r.t. the features. `multipliers` empty: MMD's default.
pub fn discrepancy(kind: Discrepancy, features: &[f32], dim: usize, is_target: &[u8],
                   multipliers: &[f32]) -> Result<(f32, Vec<f32>)> {
    let n = is_target.len();
    if dim == 0 || features.len() != n * dim {
        return Err(Error::invalid(format!("features holds {} values, expected {} x {}",
                                          features.len(), n, dim)));
    }
    let mut grad = vec![0.0f32; features.len()];
    let mut v = 0.0f32;
    let mp = if multipliers.is_empty() { std::ptr::null() } else { multipliers.as_ptr() };
    check(unsafe {
        sys::tlearn_discrepancy(kind as c_int, features.as_ptr(), n, dim, is_target.as_ptr(), mp,
                                multipliers.len() as c_int, &mut v, grad.as_mut_ptr())
    })?;
    Ok((v, grad))
}

/// How [`Model::add_pad`] fills the new positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PadMode {
    /// This value.
    Constant(f32),
    /// Mirrored without repeating the edge (torch "reflect").
    Reflect,
    /// The edge repeated (torch "replicate", ONNX "edge").
    Edge,
}

/// Padding (top, left, bottom, right) for [`Model::add_pad`] and the `_ex` pools.
pub type Pads = (i32, i32, i32, i32);

/// Update rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimKind {
    Sgd = 1,
    Adam = 2,
    AdamW = 3,
}

/// Optimizer hyperparameters (see the header for ranges and defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimParam {
    Lr = 1,
    Momentum = 2,
    Dampening = 3,
    Nesterov = 4,
    WeightDecay = 5,
    Beta1 = 6,
    Beta2 = 7,
    Eps = 8,
    ClipNorm = 9,
}

/// Fisher estimators for [`Model::ewc_consolidate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fisher {
    Empirical = 1,
    Exact = 2,
    Sampled = 3,
}

/// How successive EWC consolidations combine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EwcMode {
    Separate,
    /// Running Fisher F <- gamma F + F_new.
    Online(f32),
}

/// Progress of [`Model::fit_with_progress`], reported after every step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub epoch: usize,
    pub epochs: usize,
    pub step: usize,
    pub steps_per_epoch: usize,
    pub loss: f32,
}

/// How [`Model::fit_with_progress`] ended: after all its epochs, or stopped on purpose by
/// the callback (`ControlFlow::Break`), which is not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FitEnd {
    /// Epochs that ran to their end.
    pub epochs_completed: usize,
    /// Updates (training steps) made in all.
    pub steps: usize,
    /// The callback stopped training.
    pub stopped: bool,
}

/// How to save: everything (weights, optimizer state, freeze, EWC) or inference only, and
/// the zlib level (0 = raw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SaveOptions {
    pub inference_only: bool,
    pub compress: u8,
}

// ------------------------------------------------------------------------------------------

/// An update rule and its hyperparameters (tlearn_optim).
pub struct Optimizer {
    ptr: NonNull<sys::tlearn_optim>,
}

// SAFETY: a handle may move between threads; it is never shared (not Sync).
unsafe impl Send for Optimizer {}

impl Optimizer {
    /// An optimizer with PyTorch's defaults for @p kind.
    pub fn new(kind: OptimKind) -> Result<Optimizer> {
        let mut p = ptr::null_mut();
        check(unsafe { sys::tlearn_optim_create(&mut p, kind as c_int) })?;
        Ok(Optimizer { ptr: NonNull::new(p).expect("tlearn_optim_create returned NULL") })
    }

    /// Set a hyperparameter.
    pub fn set(&mut self, param: OptimParam, value: f64) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_optim_set(self.ptr.as_ptr(), param as c_int, value) })?;
        Ok(self)
    }

    /// Set the learning rate.
    pub fn set_lr(&mut self, lr: f64) -> Result<&mut Self> {
        self.set(OptimParam::Lr, lr)
    }

    /// Read a hyperparameter.
    pub fn get(&self, param: OptimParam) -> Result<f64> {
        let mut v = 0.0;
        check(unsafe { sys::tlearn_optim_get(self.ptr.as_ptr(), param as c_int, &mut v) })?;
        Ok(v)
    }

    /// The update rule.
    pub fn kind(&self) -> Result<OptimKind> {
        let mut k = 0;
        check(unsafe { sys::tlearn_optim_kind(self.ptr.as_ptr(), &mut k) })?;
        Ok(match k {
            1 => OptimKind::Sgd,
            2 => OptimKind::Adam,
            _ => OptimKind::AdamW,
        })
    }

    /// Attach a copy of @p schedule at its step 0 (None detaches).
    pub fn set_schedule(&mut self, schedule: Option<&Schedule>) -> Result<&mut Self> {
        let s = schedule.map_or(ptr::null(), |s| s.ptr.as_ptr() as *const _);
        check(unsafe { sys::tlearn_optim_set_schedule(self.ptr.as_ptr(), s) })?;
        Ok(self)
    }

    /// Advance the attached schedule by one step.
    pub fn schedule_step(&mut self) -> Result<()> {
        check(unsafe { sys::tlearn_optim_schedule_step(self.ptr.as_ptr()) })
    }

    /// Steps the attached schedule has taken.
    pub fn schedule_position(&self) -> Result<i64> {
        let mut v = 0i64;
        check(unsafe { sys::tlearn_optim_schedule_position(self.ptr.as_ptr(), &mut v) })?;
        Ok(v)
    }

    /// The value the next update uses (the scheduled learning rate, cycled momentum).
    pub fn current(&self, param: OptimParam) -> Result<f64> {
        let mut v = 0.0;
        check(unsafe { sys::tlearn_optim_get_current(self.ptr.as_ptr(), param as c_int, &mut v) })?;
        Ok(v)
    }

    /// The raw handle, for calls through [`sys`].
    pub fn as_ptr(&self) -> *mut sys::tlearn_optim {
        self.ptr.as_ptr()
    }
}

impl Drop for Optimizer {
    fn drop(&mut self) {
        let mut p = self.ptr.as_ptr();
        unsafe { sys::tlearn_optim_destroy(&mut p) };
    }
}

// ------------------------------------------------------------------------------------------

/// Learning-rate schedule kinds (enum tlearn_sched_kind), equal to torch's schedulers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    Constant = 1,
    Step = 2,
    MultiStep = 3,
    Exponential = 4,
    Cosine = 5,
    CosineRestarts = 6,
    OneCycle = 7,
    SlantedTriangular = 8,
}

/// A learning-rate schedule (tlearn_sched); parameters are `sys::TLEARN_SCHED_*` values.
pub struct Schedule {
    ptr: NonNull<sys::tlearn_sched>,
}

// SAFETY: a handle may move between threads; it is never shared (not Sync).
unsafe impl Send for Schedule {}

impl Schedule {
    /// A schedule of @p kind with torch's defaults.
    pub fn new(kind: ScheduleKind) -> Result<Schedule> {
        let mut p = ptr::null_mut();
        check(unsafe { sys::tlearn_sched_create(&mut p, kind as c_int) })?;
        Ok(Schedule { ptr: NonNull::new(p).expect("tlearn_sched_create returned NULL") })
    }
    /// Set a parameter (`sys::TLEARN_SCHED_GAMMA`, ...).
    pub fn set(&mut self, param: c_int, value: f64) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_sched_set(self.ptr.as_ptr(), param, value) })?;
        Ok(self)
    }
    /// Read a parameter.
    pub fn get(&self, param: c_int) -> Result<f64> {
        let mut v = 0.0;
        check(unsafe { sys::tlearn_sched_get(self.ptr.as_ptr(), param, &mut v) })?;
        Ok(v)
    }
    /// Milestones of a multi-step schedule.
    pub fn set_milestones(&mut self, milestones: &[i64]) -> Result<&mut Self> {
        check(unsafe {
            sys::tlearn_sched_set_milestones(self.ptr.as_ptr(), milestones.as_ptr(), milestones.len())
        })?;
        Ok(self)
    }
}

impl Drop for Schedule {
    fn drop(&mut self) {
        let mut p = self.ptr.as_ptr();
        unsafe { sys::tlearn_sched_destroy(&mut p) };
    }
}

/// Options of [`Model::fit_run`] (tlearn_fit); parameters are `sys::TLEARN_FIT_*` values.
pub struct FitOptions {
    ptr: NonNull<sys::tlearn_fit>,
}

// SAFETY: as Schedule.
unsafe impl Send for FitOptions {}

impl FitOptions {
    pub fn new() -> Result<FitOptions> {
        let mut p = ptr::null_mut();
        check(unsafe { sys::tlearn_fit_create(&mut p) })?;
        Ok(FitOptions { ptr: NonNull::new(p).expect("tlearn_fit_create returned NULL") })
    }
    /// Set an option (`sys::TLEARN_FIT_BATCH`, `sys::TLEARN_FIT_MONITOR` with a
    /// `sys::TLEARN_METRIC_*` value, ...).
    pub fn set(&mut self, param: c_int, value: f64) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_fit_set(self.ptr.as_ptr(), param, value) })?;
        Ok(self)
    }
    pub fn get(&self, param: c_int) -> Result<f64> {
        let mut v = 0.0;
        check(unsafe { sys::tlearn_fit_get(self.ptr.as_ptr(), param, &mut v) })?;
        Ok(v)
    }
    /// Save the best epoch's checkpoint to @p path (None: do not).
    pub fn set_checkpoint(&mut self, path: Option<&Path>) -> Result<&mut Self> {
        let c = path.map(cpath).transpose()?;
        check(unsafe {
            sys::tlearn_fit_set_checkpoint(self.ptr.as_ptr(), c.as_ref().map_or(ptr::null(), |c| c.as_ptr()))
        })?;
        Ok(self)
    }
}

impl Drop for FitOptions {
    fn drop(&mut self) {
        let mut p = self.ptr.as_ptr();
        unsafe { sys::tlearn_fit_destroy(&mut p) };
    }
}

/// Labels (cross-entropy models) or float targets (MSE models) for [`Model::fit_run`].
#[derive(Clone, Copy)]
pub enum Targets<'a> {
    Labels(&'a [i32]),
    Values(&'a [f32]),
}

impl Targets<'_> {
    fn raw(&self) -> (*const c_void, usize) {
        match self {
            Targets::Labels(l) => (l.as_ptr() as *const c_void, l.len()),
            Targets::Values(v) => (v.as_ptr() as *const c_void, v.len()),
        }
    }
}

/// One epoch's record from [`Model::fit_run`]: (metric, value) pairs of those computed.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub epochs: usize,
    pub values: Vec<(c_int, f64)>,
}

impl EpochRecord {
    /// The value of a `sys::TLEARN_METRIC_*`, if computed.
    pub fn get(&self, metric: c_int) -> Option<f64> {
        self.values.iter().find(|(m, _)| *m == metric).map(|(_, v)| *v)
    }
}

/// Per-class metrics of [`Model::evaluate_classes`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClassMetrics {
    pub top_k: f32,
    /// classes x classes, row = true label, column = prediction
    pub confusion: Vec<i64>,
    pub precision: Vec<f32>,
    pub recall: Vec<f32>,
    pub f1: Vec<f32>,
}

struct EpochState<'a, F> {
    f: &'a mut F,
    records: Vec<EpochRecord>,
    panic: Option<Box<dyn Any + Send>>,
    stopped: bool, // the closure returned Break
}

unsafe extern "C" fn epoch_trampoline<F>(e: *const sys::tlearn_epoch, user: *mut c_void) -> c_int
where
    F: FnMut(&EpochRecord) -> ControlFlow<()>,
{
    let state = &mut *(user as *mut EpochState<F>);
    let (mut epoch, mut epochs) = (0, 0);
    sys::tlearn_epoch_index(e, &mut epoch, &mut epochs);
    let mut rec = EpochRecord { epoch: epoch as usize, epochs: epochs as usize, values: Vec::new() };
    for metric in 1..=10 {
        let mut v = 0.0;
        if sys::tlearn_epoch_get(e, metric, &mut v) == status::OK {
            rec.values.push((metric, v));
        }
    }
    let r = panic::catch_unwind(AssertUnwindSafe(|| (state.f)(&rec)));
    state.records.push(rec);
    match r {
        Ok(ControlFlow::Continue(())) => 0,
        Ok(ControlFlow::Break(())) => {
            state.stopped = true;
            1
        }
        Err(payload) => {
            state.panic = Some(payload);
            1
        }
    }
}

// ------------------------------------------------------------------------------------------

/// Which layers train, and at which learning-rate scale (tlearn_freeze). Rules apply in
/// the order added; each method returns `&mut Self` so rules chain.
pub struct FreezePolicy {
    ptr: NonNull<sys::tlearn_freeze>,
}

// SAFETY: as Optimizer.
unsafe impl Send for FreezePolicy {}

impl FreezePolicy {
    /// An empty policy: nothing frozen, every scale 1.
    pub fn new() -> Result<FreezePolicy> {
        let mut p = ptr::null_mut();
        check(unsafe { sys::tlearn_freeze_create(&mut p) })?;
        Ok(FreezePolicy { ptr: NonNull::new(p).expect("tlearn_freeze_create returned NULL") })
    }

    /// Freeze every layer up to and including @p layer.
    pub fn until(&mut self, layer: &str) -> Result<&mut Self> {
        let c = cstring(layer, "layer")?;
        check(unsafe { sys::tlearn_freeze_until(self.ptr.as_ptr(), c.as_ptr()) })?;
        Ok(self)
    }

    /// Freeze (or unfreeze) the layers matching a shell-style pattern.
    pub fn matching(&mut self, glob: &str, frozen: bool) -> Result<&mut Self> {
        let c = cstring(glob, "pattern")?;
        check(unsafe { sys::tlearn_freeze_match(self.ptr.as_ptr(), c.as_ptr(), frozen as c_int) })?;
        Ok(self)
    }

    /// Freeze (or unfreeze) single tensors whose "layer.param" names match a shell-style
    /// pattern (BitFit: `matching("*", true)` then `tensors("*bias", false)`).
    pub fn tensors(&mut self, glob: &str, frozen: bool) -> Result<&mut Self> {
        let c = cstring(glob, "pattern")?;
        check(unsafe { sys::tlearn_freeze_tensors(self.ptr.as_ptr(), c.as_ptr(), frozen as c_int) })?;
        Ok(self)
    }

    /// Freeze (or unfreeze) layers first..=last by index.
    pub fn range(&mut self, first: i32, last: i32, frozen: bool) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_freeze_range(self.ptr.as_ptr(), first, last, frozen as c_int) })?;
        Ok(self)
    }

    /// Multiply the learning rate of matching layers by @p scale.
    pub fn lr_scale(&mut self, glob: &str, scale: f32) -> Result<&mut Self> {
        let c = cstring(glob, "pattern")?;
        check(unsafe { sys::tlearn_freeze_lr_scale(self.ptr.as_ptr(), c.as_ptr(), scale) })?;
        Ok(self)
    }

    /// ULMFiT discriminative rates: 1, 1/factor, 1/factor^2, ... from the head back.
    pub fn ulmfit(&mut self, factor: f32) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_freeze_ulmfit(self.ptr.as_ptr(), factor) })?;
        Ok(self)
    }

    /// Keep batchnorm running statistics fixed even in training mode.
    pub fn bn_stats(&mut self, frozen: bool) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_freeze_bn_stats(self.ptr.as_ptr(), frozen as c_int) })?;
        Ok(self)
    }

    /// The raw handle.
    pub fn as_ptr(&self) -> *mut sys::tlearn_freeze {
        self.ptr.as_ptr()
    }
}

impl Drop for FreezePolicy {
    fn drop(&mut self) {
        let mut p = self.ptr.as_ptr();
        unsafe { sys::tlearn_freeze_destroy(&mut p) };
    }
}

// ------------------------------------------------------------------------------------------

/// The array of one model input for Model::run.
pub enum Input<'a> {
    F32(&'a [f32]),
    I32(&'a [i32]),
}

/// A network, its weights and its training state (tlearn_model).
pub struct Model {
    ptr: NonNull<sys::tlearn_model>,
}

// SAFETY: as Optimizer.
unsafe impl Send for Model {}

/// State shared with a C callback: the Rust closure and a caught panic, if any.
struct CallbackState<'a, F: ?Sized> {
    f: &'a mut F,
    panic: Option<Box<dyn Any + Send>>,
}

struct ProgressState<'a, F> {
    f: &'a mut F,
    panic: Option<Box<dyn Any + Send>>,
    stopped: bool,              // the closure returned Break
    last: Option<(usize, usize, usize)>, // epoch, step, steps per epoch of the last call
}

unsafe extern "C" fn progress_trampoline<F>(epoch: c_int, epochs: c_int, step: usize,
                                            steps: usize, loss: f32, user: *mut c_void)
                                            -> c_int
where
    F: FnMut(&Progress) -> ControlFlow<()>,
{
    let state = &mut *(user as *mut ProgressState<F>);
    let p = Progress {
        epoch: epoch as usize,
        epochs: epochs as usize,
        step,
        steps_per_epoch: steps,
        loss,
    };
    state.last = Some((p.epoch, step, steps));
    // A panic must not unwind through C: catch it, stop, and resume it after the call.
    match panic::catch_unwind(AssertUnwindSafe(|| (state.f)(&p))) {
        Ok(ControlFlow::Continue(())) => 0,
        Ok(ControlFlow::Break(())) => {
            state.stopped = true;
            1
        }
        Err(payload) => {
            state.panic = Some(payload);
            1
        }
    }
}

/// The name-map type of imports without a map.
type NoMap = fn(&str) -> Option<String>;

/// Runs one safetensors import through @p call (the C function with its source bound),
/// with @p map behind the name-map trampoline; a panic in @p map is resumed here.
fn import_st<F, C>(strict: bool, map: Option<&mut F>, call: C) -> Result<usize>
where
    F: FnMut(&str) -> Option<String>,
    C: FnOnce(sys::tlearn_name_map_fn, *mut c_void, std::os::raw::c_uint, *mut usize) -> c_int,
{
    let flags = if strict { sys::TLEARN_LOAD_STRICT } else { sys::TLEARN_LOAD_PARTIAL };
    let mut matched = 0;
    let f = match map {
        Some(f) => f,
        None => {
            check(call(None, ptr::null_mut(), flags, &mut matched))?;
            return Ok(matched);
        }
    };
    let mut state = CallbackState { f, panic: None };
    let rc = call(Some(name_map_trampoline::<F>),
                  &mut state as *mut CallbackState<F> as *mut c_void, flags, &mut matched);
    if let Some(payload) = state.panic.take() {
        panic::resume_unwind(payload);
    }
    check(rc)?;
    Ok(matched)
}

/// The buffer a *_buffer call allocates (call(data_out, size_out)), copied into a Vec and
/// released with tlearn_free.
fn take_buffer<C>(call: C) -> Result<Vec<u8>>
where
    C: FnOnce(*mut *mut c_void, *mut usize) -> c_int,
{
    let (mut data, mut size) = (ptr::null_mut(), 0usize);
    check(call(&mut data, &mut size))?;
    // SAFETY: on success the library hands over `size` readable bytes at `data`.
    let out = unsafe { std::slice::from_raw_parts(data as *const u8, size) }.to_vec();
    unsafe { sys::tlearn_free(data) };
    Ok(out)
}

fn save_flags(options: SaveOptions) -> Result<std::os::raw::c_uint> {
    if options.compress > 9 {
        return Err(Error::invalid(format!("compress is {}, expected 0..9", options.compress)));
    }
    Ok(if options.inference_only { sys::TLEARN_SAVE_INFERENCE } else { sys::TLEARN_SAVE_FULL }
        | sys::tlearn_save_compress(options.compress as u32))
}

unsafe extern "C" fn name_map_trampoline<F>(file_name: *const c_char, out: *mut c_char,
                                            out_len: usize, user: *mut c_void) -> c_int
where
    F: FnMut(&str) -> Option<String>,
{
    let state = &mut *(user as *mut CallbackState<F>);
    let name = CStr::from_ptr(file_name).to_string_lossy();
    match panic::catch_unwind(AssertUnwindSafe(|| (state.f)(&name))) {
        Ok(Some(target)) => {
            let bytes = target.as_bytes();
            if bytes.len() + 1 > out_len || bytes.contains(&0) {
                return 0; // cannot be represented: skipped, and strict mode reports it
            }
            ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, out, bytes.len());
            *out.add(bytes.len()) = 0;
            1
        }
        Ok(None) => 0,
        Err(payload) => {
            state.panic = Some(payload);
            0
        }
    }
}

unsafe extern "C" fn metadata_trampoline(key: *const c_char, value: *const c_char,
                                         user: *mut c_void) -> c_int {
    let out = &mut *(user as *mut Vec<(String, String)>);
    out.push((cstr_to_string(key), cstr_to_string(value)));
    0
}

/// List the metadata of a checkpoint file without loading its weights.
pub fn read_metadata(path: impl AsRef<Path>) -> Result<Vec<(String, String)>> {
    let p = cpath(path.as_ref())?;
    let mut out: Vec<(String, String)> = Vec::new();
    check(unsafe {
        sys::tlearn_checkpoint_read_metadata(p.as_ptr(), Some(metadata_trampoline),
                                             &mut out as *mut _ as *mut c_void)
    })?;
    Ok(out)
}

#[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; Debian 12 has 1.63
fn batch_len(len: usize, per_example: usize, what: &str) -> Result<usize> {
    if per_example == 0 || len == 0 || len % per_example != 0 {
        return Err(Error::invalid(format!(
            "{what} has {len} floats; expected a non-zero multiple of {per_example} (one example)"
        )));
    }
    Ok(len / per_example)
}

fn labels_len(labels: &[i32], n: usize) -> Result<()> {
    if labels.len() != n {
        return Err(Error::invalid(format!("labels has {} entries; expected {n}", labels.len())));
    }
    Ok(())
}

impl Model {
    fn from_raw(p: *mut sys::tlearn_model) -> Model {
        Model { ptr: NonNull::new(p).expect("libtlearn returned a NULL model") }
    }

    fn raw(&self) -> *mut sys::tlearn_model {
        self.ptr.as_ptr()
    }

    /// An empty model for inputs of shape (channels, height, width); (features, 1, 1) for
    /// vectors.
    pub fn new(channels: i32, height: i32, width: i32) -> Result<Model> {
        let mut p = ptr::null_mut();
        check(unsafe { sys::tlearn_model_create(&mut p, channels, height, width) })?;
        Ok(Model::from_raw(p))
    }

    /// An empty model whose first input @p name holds examples of shape @p dims (1 to 4
    /// sizes); @p int32 for token ids.
    pub fn with_input(name: &str, dims: &[i32], int32: bool) -> Result<Model> {
        let c = cstring(name, "name")?;
        let mut p = ptr::null_mut();
        let dtype = if int32 { sys::TLEARN_DTYPE_INT32 } else { sys::TLEARN_DTYPE_FLOAT32 };
        check(unsafe {
            sys::tlearn_model_create_input(&mut p, c.as_ptr(), dtype, dims.len() as c_int,
                                           dims.as_ptr())
        })?;
        Ok(Model::from_raw(p))
    }

    /// Another graph input (a mask, a second image); layers read it by name.
    pub fn add_input(&mut self, name: &str, dims: &[i32], int32: bool) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        let dtype = if int32 { sys::TLEARN_DTYPE_INT32 } else { sys::TLEARN_DTYPE_FLOAT32 };
        check(unsafe {
            sys::tlearn_model_add_input(self.raw(), c.as_ptr(), dtype, dims.len() as c_int,
                                        dims.as_ptr())
        })?;
        Ok(self)
    }

    /// Load a libtlearn checkpoint.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let c = cpath(path.as_ref())?;
        let mut p = ptr::null_mut();
        check(unsafe { sys::tlearn_model_load(&mut p, ptr::null_mut(), c.as_ptr()) })?;
        Ok(Model::from_raw(p))
    }

    /// A model with this one's graph whose parameter tensors share this one's data
    /// (reference-counted, copied on write): one base, many adapted handles.
    pub fn create_shared(&self) -> Result<Model> {
        let mut p = ptr::null_mut();
        check(unsafe { sys::tlearn_model_create_shared(&mut p, self.raw()) })?;
        Ok(Model::from_raw(p))
    }

    /// Whether tensor "layer.param" holds data another handle holds too.
    pub fn tensor_shared(&self, tensor: &str) -> Result<bool> {
        let c = cstring(tensor, "tensor")?;
        let mut s = 0;
        check(unsafe { sys::tlearn_model_tensor_shared(self.raw(), c.as_ptr(), &mut s) })?;
        Ok(s != 0)
    }

    /// Load a checkpoint with its optimizer (None when the file holds no optimizer).
    pub fn load_with_optimizer(path: impl AsRef<Path>) -> Result<(Model, Option<Optimizer>)> {
        let c = cpath(path.as_ref())?;
        let (mut p, mut o) = (ptr::null_mut(), ptr::null_mut());
        check(unsafe { sys::tlearn_model_load(&mut p, &mut o, c.as_ptr()) })?;
        Ok((Model::from_raw(p), NonNull::new(o).map(|ptr| Optimizer { ptr })))
    }

    /// Load a checkpoint from its bytes ([`Model::to_bytes`], or a file's contents), with
    /// the checks of [`Model::load`].
    pub fn from_bytes(data: &[u8]) -> Result<Model> {
        let mut p = ptr::null_mut();
        check(unsafe {
            sys::tlearn_model_load_buffer(&mut p, ptr::null_mut(), data.as_ptr() as *const c_void,
                                          data.len())
        })?;
        Ok(Model::from_raw(p))
    }

    /// [`Model::from_bytes`] with the optimizer (None when the bytes hold no optimizer).
    pub fn from_bytes_with_optimizer(data: &[u8]) -> Result<(Model, Option<Optimizer>)> {
        let (mut p, mut o) = (ptr::null_mut(), ptr::null_mut());
        check(unsafe {
            sys::tlearn_model_load_buffer(&mut p, &mut o, data.as_ptr() as *const c_void,
                                          data.len())
        })?;
        Ok((Model::from_raw(p), NonNull::new(o).map(|ptr| Optimizer { ptr })))
    }

    /// Build a model from an ONNX file.
    pub fn import_onnx(path: impl AsRef<Path>) -> Result<Model> {
        let c = cpath(path.as_ref())?;
        let mut p = ptr::null_mut();
        check(unsafe { sys::tlearn_model_import_onnx(&mut p, c.as_ptr()) })?;
        Ok(Model::from_raw(p))
    }

    /// Build a model from the bytes of an ONNX file.
    pub fn import_onnx_bytes(data: &[u8]) -> Result<Model> {
        let mut p = ptr::null_mut();
        check(unsafe {
            sys::tlearn_model_import_onnx_buffer(&mut p, data.as_ptr() as *const c_void,
                                                 data.len())
        })?;
        Ok(Model::from_raw(p))
    }

    /// The raw handle, for calls through [`sys`].
    pub fn as_ptr(&self) -> *mut sys::tlearn_model {
        self.raw()
    }

    // -- settings -----------------------------------------------------------------------
    pub fn set_threads(&mut self, threads: i32) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_model_set_threads(self.raw(), threads) })?;
        Ok(self)
    }
    pub fn set_seed(&mut self, seed: u64) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_model_set_seed(self.raw(), seed) })?;
        Ok(self)
    }
    /// Training (true) or evaluation (false) mode for dropout and batchnorm.
    pub fn set_training(&mut self, training: bool) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_model_set_training(self.raw(), training as c_int) })?;
        Ok(self)
    }
    pub fn set_loss(&mut self, loss: Loss) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_model_set_loss(self.raw(), loss as c_int) })?;
        Ok(self)
    }
    /// The next layer reads from @p layer (None: the model input).
    pub fn set_next_input(&mut self, layer: Option<&str>) -> Result<&mut Self> {
        let c = layer.map(|l| cstring(l, "layer")).transpose()?;
        let p = c.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        check(unsafe { sys::tlearn_model_set_next_input(self.raw(), p) })?;
        Ok(self)
    }

    // -- layers -------------------------------------------------------------------------
    pub fn add_dense(&mut self, name: &str, units: i32) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_add_dense(self.raw(), c.as_ptr(), units) })?;
        Ok(self)
    }
    /// torch.nn.Linear over the last axis: (..., K) -> (..., units).
    pub fn add_linear(&mut self, name: &str, units: i32, bias: bool) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_add_linear(self.raw(), c.as_ptr(), units, bias as c_int) })?;
        Ok(self)
    }
    /// torch.nn.Embedding over the next input, an int32 model input of token ids (T):
    /// -> (T, dim). @p padding_idx (-1: none) names a row that gets no gradient.
    pub fn add_embedding(&mut self, name: &str, vocab: i32, dim: i32, padding_idx: i32)
                         -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_add_embedding(self.raw(), c.as_ptr(), vocab, dim, padding_idx) })?;
        Ok(self)
    }
    /// Position vectors added to a sequence (T, D), T <= max_len: learned or sinusoidal.
    pub fn add_position_embedding(&mut self, name: &str, max_len: i32, sinusoidal: bool)
                                  -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe {
            sys::tlearn_model_add_position_embedding(self.raw(), c.as_ptr(), max_len, sinusoidal as c_int)
        })?;
        Ok(self)
    }
    /// Multi-head self-attention over (T, D) with torch.nn.MultiheadAttention's parameters;
    /// @p mask names a key-padding mask (T) input (1 keep, 0 pad).
    pub fn add_attention(&mut self, name: &str, heads: i32, causal: bool, mask: Option<&str>)
                         -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        let mk = mask.map(|s| cstring(s, "mask")).transpose()?;
        let mp = mk.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        check(unsafe { sys::tlearn_model_add_attention(self.raw(), c.as_ptr(), heads, causal as c_int, mp) })?;
        Ok(self)
    }
    /// Pool (T, D) into (D): the first token, or the mean over the positions @p mask keeps.
    pub fn add_token_pool(&mut self, name: &str, mean: bool, mask: Option<&str>)
                          -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        let mk = mask.map(|s| cstring(s, "mask")).transpose()?;
        let mp = mk.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        check(unsafe { sys::tlearn_model_add_token_pool(self.raw(), c.as_ptr(), mean as c_int, mp) })?;
        Ok(self)
    }
    /// The layers of torch.nn.TransformerEncoderLayer(batch_first=True) over (T, D), named
    /// after its state_dict (`name.self_attn`, `name.linear1`, `name.norm1`, ...).
    /// @p activation: Relu, Gelu or GeluTanh.
    #[allow(clippy::too_many_arguments)]
    pub fn add_transformer_block(&mut self, name: &str, heads: i32, ff_dim: i32,
                                 activation: Activation, norm_first: bool, dropout: f32,
                                 mask: Option<&str>) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        let kind = match activation {
            Activation::Relu => sys::TLEARN_ACT_RELU,
            Activation::Gelu => sys::TLEARN_ACT_GELU,
            Activation::GeluTanh => sys::TLEARN_ACT_GELU_TANH,
            _ => return Err(Error::invalid("a transformer block takes Relu, Gelu or GeluTanh".into())),
        };
        let mk = mask.map(|s| cstring(s, "mask")).transpose()?;
        let mp = mk.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        check(unsafe {
            sys::tlearn_model_add_transformer_block(self.raw(), c.as_ptr(), heads, ff_dim, kind,
                                                    norm_first as c_int, dropout, mp)
        })?;
        Ok(self)
    }
    /// ViT patch embedding (C, H, W) -> (T, dim) in torchvision's layout.
    pub fn add_patch_embed(&mut self, name: &str, dim: i32, patch: i32, class_token: bool,
                           positions: bool) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe {
            sys::tlearn_model_add_patch_embed(self.raw(), c.as_ptr(), dim, patch,
                                              class_token as c_int, positions as c_int)
        })?;
        Ok(self)
    }
    pub fn add_flatten(&mut self, name: &str) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_add_flatten(self.raw(), c.as_ptr()) })?;
        Ok(self)
    }
    pub fn add_activation(&mut self, name: &str, act: Activation) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        let (kind, param) = match act {
            Activation::Relu => (sys::TLEARN_ACT_RELU, 0.0),
            Activation::Tanh => (sys::TLEARN_ACT_TANH, 0.0),
            Activation::Sigmoid => (sys::TLEARN_ACT_SIGMOID, 0.0),
            Activation::Gelu => (sys::TLEARN_ACT_GELU, 0.0),
            Activation::Relu6 => (sys::TLEARN_ACT_RELU6, 0.0),
            Activation::LeakyRelu(slope) => (sys::TLEARN_ACT_LEAKY_RELU, slope),
            // the 1.1 activations take their parameters through add_activation_ex
            Activation::HardSigmoid(alpha, beta) => {
                return self.add_activation_ex(c, sys::TLEARN_ACT_HARDSIGMOID, &[alpha, beta]);
            }
            Activation::HardSwish => return self.add_activation_ex(c, sys::TLEARN_ACT_HARDSWISH, &[]),
            Activation::Silu => return self.add_activation_ex(c, sys::TLEARN_ACT_SILU, &[]),
            Activation::Clip(lo, hi) => {
                return self.add_activation_ex(c, sys::TLEARN_ACT_CLIP, &[lo, hi]);
            }
            Activation::GeluTanh => return self.add_activation_ex(c, sys::TLEARN_ACT_GELU_TANH, &[]),
        };
        check(unsafe { sys::tlearn_model_add_activation(self.raw(), c.as_ptr(), kind, param) })?;
        Ok(self)
    }
    fn add_activation_ex(&mut self, name: CString, kind: c_int, params: &[f32])
                         -> Result<&mut Self> {
        check(unsafe {
            sys::tlearn_model_add_activation_ex(self.raw(), name.as_ptr(), kind,
                                                params.as_ptr(), params.len() as c_int)
        })?;
        Ok(self)
    }
    /// Elementwise `a op b` of two layers or model inputs by name, with NumPy broadcasting
    /// of the example shapes (aligned on the right, a size of 1 stretches): a (C, 1, 1)
    /// gate times a (C, H, W) map is squeeze-excitation. `a` None reads what the next
    /// layer would (the previous layer).
    pub fn add_binary(&mut self, name: &str, op: BinaryOp, a: Option<&str>, b: &str)
                      -> Result<&mut Self> {
        let (c, cb) = (cstring(name, "name")?, cstring(b, "b")?);
        let ca = a.map(|a| cstring(a, "a")).transpose()?;
        let pa = ca.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        check(unsafe {
            sys::tlearn_model_add_binary(self.raw(), c.as_ptr(), op as c_int, pa, cb.as_ptr())
        })?;
        Ok(self)
    }
    /// `x * weight (+ bias)` with a learned weight of shape @p dims (starting at 1)
    /// broadcast to the input: (C, 1, 1) per channel, (D) over the last axis.
    pub fn add_scale(&mut self, name: &str, dims: &[i32], bias: bool) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe {
            sys::tlearn_model_add_scale(self.raw(), c.as_ptr(), dims.len() as c_int,
                                        dims.as_ptr(), bias as c_int)
        })?;
        Ok(self)
    }
    /// Softmax over axis @p axis of each example (0 = first, -1 = last).
    pub fn add_softmax(&mut self, name: &str, axis: i32) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_add_softmax(self.raw(), c.as_ptr(), axis) })?;
        Ok(self)
    }
    pub fn add_conv2d(&mut self, name: &str, filters: i32, kernel: i32, stride: i32, pad: i32,
                      groups: i32) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe {
            sys::tlearn_model_add_conv2d(self.raw(), c.as_ptr(), filters, kernel, stride, pad,
                                         groups)
        })?;
        Ok(self)
    }
    /// Convolution with (h, w) kernel, stride, padding and dilation.
    #[allow(clippy::too_many_arguments)]
    pub fn add_conv2d_ex(&mut self, name: &str, filters: i32, kernel: (i32, i32),
                         stride: (i32, i32), pad: (i32, i32), dilation: (i32, i32),
                         groups: i32, bias: bool) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe {
            sys::tlearn_model_add_conv2d_ex(self.raw(), c.as_ptr(), filters, kernel.0,
                                            kernel.1, stride.0, stride.1, pad.0, pad.1,
                                            dilation.0, dilation.1, groups, bias as c_int)
        })?;
        Ok(self)
    }
    pub fn add_maxpool2d(&mut self, name: &str, kernel: i32, stride: i32, pad: i32)
                         -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_add_maxpool2d(self.raw(), c.as_ptr(), kernel, stride, pad) })?;
        Ok(self)
    }
    pub fn add_avgpool2d(&mut self, name: &str, kernel: i32, stride: i32, pad: i32,
                         count_include_pad: bool) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe {
            sys::tlearn_model_add_avgpool2d(self.raw(), c.as_ptr(), kernel, stride, pad,
                                            count_include_pad as c_int)
        })?;
        Ok(self)
    }
    pub fn add_global_avgpool(&mut self, name: &str) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_add_global_avgpool(self.raw(), c.as_ptr()) })?;
        Ok(self)
    }
    pub fn add_batchnorm(&mut self, name: &str, eps: f32, momentum: f32) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_add_batchnorm(self.raw(), c.as_ptr(), eps, momentum) })?;
        Ok(self)
    }
    pub fn add_dropout(&mut self, name: &str, p: f32) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_add_dropout(self.raw(), c.as_ptr(), p) })?;
        Ok(self)
    }
    /// Residual sum of the previous layer's output and layer @p other's.
    pub fn add_add(&mut self, name: &str, other: &str) -> Result<&mut Self> {
        let (c, o) = (cstring(name, "name")?, cstring(other, "other")?);
        check(unsafe { sys::tlearn_model_add_add(self.raw(), c.as_ptr(), o.as_ptr()) })?;
        Ok(self)
    }

    // -- data movement (axes count over one example's dims; the batch is not an axis) ---
    /// Concatenation of the outputs of @p inputs (2 to 256 names of layers or model
    /// inputs; a name may repeat) along @p axis (0: channels of (C, H, W); negative counts
    /// from the end), as torch.cat.
    pub fn add_concat(&mut self, name: &str, inputs: &[&str], axis: i32) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        let owned = inputs.iter().map(|s| cstring(s, "inputs")).collect::<Result<Vec<_>>>()?;
        let ptrs: Vec<*const c_char> = owned.iter().map(|s| s.as_ptr()).collect();
        let n = c_int::try_from(ptrs.len()).unwrap_or(c_int::MAX);
        check(unsafe { sys::tlearn_model_add_concat(self.raw(), c.as_ptr(), ptrs.as_ptr(), n, axis) })?;
        Ok(self)
    }
    /// x[..., start:end:step, ...] on one axis with ONNX Slice's (Python's) rules for
    /// negative and out-of-range bounds (i32::MAX as @p end: to the end); step >= 1.
    pub fn add_slice(&mut self, name: &str, axis: i32, start: i32, end: i32, step: i32)
                     -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_add_slice(self.raw(), c.as_ptr(), axis, start, end, step) })?;
        Ok(self)
    }
    /// Reshape each example to @p dims (1 to 4 sizes; 0 keeps the input's size at that
    /// index, one -1 is inferred).
    pub fn add_reshape(&mut self, name: &str, dims: &[i32]) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        let rank = c_int::try_from(dims.len()).unwrap_or(c_int::MAX);
        check(unsafe { sys::tlearn_model_add_reshape(self.raw(), c.as_ptr(), rank, dims.as_ptr()) })?;
        Ok(self)
    }
    /// Permute each example's axes: output axis i is input axis perm[i] (torch.permute
    /// without the batch dim).
    pub fn add_transpose(&mut self, name: &str, perm: &[i32]) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        let rank = c_int::try_from(perm.len()).unwrap_or(c_int::MAX);
        check(unsafe { sys::tlearn_model_add_transpose(self.raw(), c.as_ptr(), rank, perm.as_ptr()) })?;
        Ok(self)
    }
    /// torch.nn.LayerNorm over the last `naxes` axes (weight/bias of their shape when
    /// `affine`).
    pub fn add_layernorm(&mut self, name: &str, naxes: i32, eps: f32, affine: bool)
                         -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe {
            sys::tlearn_model_add_layernorm(self.raw(), c.as_ptr(), naxes, eps, affine as c_int)
        })?;
        Ok(self)
    }
    /// Layer norm over the channels of a (C, ...) input at every position (ConvNeXt's
    /// LayerNorm2d); weight/bias of shape (C).
    pub fn add_layernorm_channels(&mut self, name: &str, eps: f32, affine: bool)
                                  -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe {
            sys::tlearn_model_add_layernorm_channels(self.raw(), c.as_ptr(), eps, affine as c_int)
        })?;
        Ok(self)
    }
    /// Max pooling as ONNX MaxPool: (h, w) kernel, stride (0: the kernel) and dilation,
    /// padding (top, left, bottom, right), ceil mode.
    pub fn add_maxpool2d_ex(&mut self, name: &str, kernel: (i32, i32), stride: (i32, i32),
                            pads: Pads, dilation: (i32, i32), ceil_mode: bool)
                            -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe {
            sys::tlearn_model_add_maxpool2d_ex(self.raw(), c.as_ptr(), kernel.0, kernel.1,
                                               stride.0, stride.1, pads.0, pads.1, pads.2,
                                               pads.3, dilation.0, dilation.1,
                                               ceil_mode as c_int)
        })?;
        Ok(self)
    }
    /// Average pooling as ONNX AveragePool; arguments as [`Model::add_maxpool2d_ex`].
    pub fn add_avgpool2d_ex(&mut self, name: &str, kernel: (i32, i32), stride: (i32, i32),
                            pads: Pads, ceil_mode: bool, count_include_pad: bool)
                            -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe {
            sys::tlearn_model_add_avgpool2d_ex(self.raw(), c.as_ptr(), kernel.0, kernel.1,
                                               stride.0, stride.1, pads.0, pads.1, pads.2,
                                               pads.3, ceil_mode as c_int,
                                               count_include_pad as c_int)
        })?;
        Ok(self)
    }
    /// torch.nn.AdaptiveAvgPool2d((oh, ow)).
    pub fn add_adaptive_avgpool(&mut self, name: &str, oh: i32, ow: i32) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_add_adaptive_avgpool(self.raw(), c.as_ptr(), oh, ow) })?;
        Ok(self)
    }
    /// Pad the last two axes by (top, left, bottom, right).
    pub fn add_pad(&mut self, name: &str, pads: Pads, mode: PadMode) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        let (m, v) = match mode {
            PadMode::Constant(v) => (sys::TLEARN_PAD_CONSTANT, v),
            PadMode::Reflect => (sys::TLEARN_PAD_REFLECT, 0.0),
            PadMode::Edge => (sys::TLEARN_PAD_EDGE, 0.0),
        };
        check(unsafe {
            sys::tlearn_model_add_pad(self.raw(), c.as_ptr(), pads.0, pads.1, pads.2, pads.3, m, v)
        })?;
        Ok(self)
    }
    /// torch.matmul of layers (or inputs) `a` and `b`: (.., M, K) x (.., K, N); with
    /// `transpose_b`, a b^T for b of shape (.., N, K).
    pub fn add_matmul(&mut self, name: &str, a: &str, b: &str, transpose_b: bool)
                      -> Result<&mut Self> {
        let (c, ca, cb) = (cstring(name, "name")?, cstring(a, "a")?, cstring(b, "b")?);
        check(unsafe {
            sys::tlearn_model_add_matmul(self.raw(), c.as_ptr(), ca.as_ptr(), cb.as_ptr(),
                                         transpose_b as c_int)
        })?;
        Ok(self)
    }
    /// Stochastic depth (torchvision StochasticDepth(p, "row")), active in training mode.
    pub fn add_drop_path(&mut self, name: &str, p: f32) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_add_drop_path(self.raw(), c.as_ptr(), p) })?;
        Ok(self)
    }

    // -- adapters -----------------------------------------------------------------------
    /// Add LoRA adapter `adapter` on every dense/linear/conv2d layer matching `glob`
    /// (targets frozen; B starts at zero). `rslora` scales by alpha/sqrt(r).
    pub fn lora_add(&mut self, adapter: &str, glob: &str, r: i32, alpha: f32, dropout: f32,
                    rslora: bool) -> Result<&mut Self> {
        let a = cstring(adapter, "adapter")?;
        let g = cstring(glob, "glob")?;
        let flags = if rslora { sys::TLEARN_LORA_RSLORA } else { 0 };
        check(unsafe { sys::tlearn_lora_add(self.raw(), a.as_ptr(), g.as_ptr(), r, alpha, dropout, flags) })?;
        Ok(self)
    }
    /// Combination weight of a LoRA adapter (0 disables it).
    pub fn lora_set_weight(&mut self, adapter: &str, weight: f32) -> Result<()> {
        let a = cstring(adapter, "adapter")?;
        check(unsafe { sys::tlearn_lora_set_weight(self.raw(), a.as_ptr(), weight) })
    }
    /// Make `adapter` the only active LoRA adapter; None disables all of them.
    pub fn lora_set_active(&mut self, adapter: Option<&str>) -> Result<()> {
        let a = adapter.map(|s| cstring(s, "adapter")).transpose()?;
        let p = a.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        check(unsafe { sys::tlearn_lora_set_active(self.raw(), p) })
    }
    /// Fold a LoRA adapter into its targets' weights.
    pub fn lora_merge(&mut self, adapter: &str) -> Result<()> {
        let a = cstring(adapter, "adapter")?;
        check(unsafe { sys::tlearn_lora_merge(self.raw(), a.as_ptr()) })
    }
    /// Undo lora_merge (within one float rounding per weight).
    pub fn lora_unmerge(&mut self, adapter: &str) -> Result<()> {
        let a = cstring(adapter, "adapter")?;
        check(unsafe { sys::tlearn_lora_unmerge(self.raw(), a.as_ptr()) })
    }
    /// Remove a LoRA adapter's layers (targets stay frozen).
    pub fn lora_remove(&mut self, adapter: &str) -> Result<()> {
        let a = cstring(adapter, "adapter")?;
        check(unsafe { sys::tlearn_lora_remove(self.raw(), a.as_ptr()) })
    }
    /// Save a LoRA adapter in PEFT's layout (adapter_model.safetensors, adapter_config.json).
    pub fn lora_save(&self, adapter: &str, dir: impl AsRef<Path>) -> Result<()> {
        let a = cstring(adapter, "adapter")?;
        let d = cpath(dir.as_ref())?;
        check(unsafe { sys::tlearn_lora_save(self.raw() as *const _, a.as_ptr(), d.as_ptr()) })
    }
    /// Add adapter `adapter` from a PEFT adapter directory.
    pub fn lora_load(&mut self, adapter: &str, dir: impl AsRef<Path>) -> Result<()> {
        let a = cstring(adapter, "adapter")?;
        let d = cpath(dir.as_ref())?;
        check(unsafe { sys::tlearn_lora_load(self.raw(), a.as_ptr(), d.as_ptr()) })
    }
    /// Insert a bottleneck adapter after every layer matching `glob`.
    pub fn add_bottleneck_adapter(&mut self, adapter: &str, glob: &str, hidden: i32,
                                  activation: i32) -> Result<&mut Self> {
        let a = cstring(adapter, "adapter")?;
        let g = cstring(glob, "glob")?;
        check(unsafe { sys::tlearn_adapter_add_bottleneck(self.raw(), a.as_ptr(), g.as_ptr(), hidden, activation) })?;
        Ok(self)
    }

    // -- introspection ------------------------------------------------------------------
    pub fn layer_count(&self) -> Result<usize> {
        let mut n = 0;
        check(unsafe { sys::tlearn_model_layer_count(self.raw(), &mut n) })?;
        Ok(n as usize)
    }
    pub fn layer_index(&self, name: &str) -> Result<usize> {
        let c = cstring(name, "name")?;
        let mut i = 0;
        check(unsafe { sys::tlearn_model_layer_index(self.raw(), c.as_ptr(), &mut i) })?;
        Ok(i as usize)
    }
    pub fn layer_name(&self, index: usize) -> Result<String> {
        let mut p = ptr::null();
        check(unsafe { sys::tlearn_model_layer_name(self.raw(), index as c_int, &mut p) })?;
        Ok(cstr_to_string(p))
    }
    /// Names of all layers, in order.
    pub fn layer_names(&self) -> Result<Vec<String>> {
        (0..self.layer_count()?).map(|i| self.layer_name(i)).collect()
    }
    pub fn layer_kind(&self, index: usize) -> Result<LayerKind> {
        let mut k = 0;
        check(unsafe { sys::tlearn_model_layer_kind(self.raw(), index as c_int, &mut k) })?;
        Ok(LayerKind::from_c(k))
    }
    fn shape_at(&self, index: c_int) -> Result<Shape> {
        let (mut c, mut h, mut w) = (0, 0, 0);
        check(unsafe { sys::tlearn_model_layer_shape(self.raw(), index, &mut c, &mut h, &mut w) })?;
        Ok(Shape { c: c as usize, h: h as usize, w: w as usize })
    }
    fn shape_nd_at(&self, index: c_int) -> Result<Vec<usize>> {
        let (mut rank, mut dims) = (0, [0 as c_int; 4]);
        check(unsafe {
            sys::tlearn_model_layer_shape_nd(self.raw(), index, &mut rank, dims.as_mut_ptr(), 4)
        })?;
        Ok(dims[..rank as usize].iter().map(|&d| d as usize).collect())
    }
    /// Output shape of layer @p index as 1 to 4 sizes (any rank).
    pub fn layer_shape_nd(&self, index: usize) -> Result<Vec<usize>> {
        self.shape_nd_at(index as c_int)
    }
    /// Output shape of layer @p index.
    pub fn layer_shape(&self, index: usize) -> Result<Shape> {
        self.shape_at(index as c_int)
    }
    pub fn input_shape(&self) -> Result<Shape> {
        self.shape_at(-1)
    }
    /// Shape of the last layer's output (ESHAPE for an empty model).
    pub fn output_shape(&self) -> Result<Shape> {
        match self.layer_count()? {
            0 => Err(Error::new(status::ESHAPE, "the model has no layers")),
            n => self.layer_shape(n - 1),
        }
    }
    fn named_shape(&self, layer: &str) -> Result<Shape> {
        self.layer_shape(self.layer_index(layer)?)
    }
    pub fn layer_param_count(&self, index: usize) -> Result<usize> {
        let mut n = 0;
        check(unsafe { sys::tlearn_model_layer_param_count(self.raw(), index as c_int, &mut n) })?;
        Ok(n)
    }
    /// (total, trainable) parameter counts.
    pub fn param_count(&self) -> Result<(usize, usize)> {
        let (mut t, mut tr) = (0, 0);
        check(unsafe { sys::tlearn_model_param_count(self.raw(), &mut t, &mut tr) })?;
        Ok((t, tr))
    }
    /// Names and shapes of every named tensor (parameters and buffers).
    pub fn tensors(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let mut n = 0;
        check(unsafe { sys::tlearn_model_tensor_count(self.raw(), &mut n) })?;
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let (mut name, mut numel, mut ndim, mut dims) = (ptr::null(), 0usize, 0, [0; 4]);
            check(unsafe {
                sys::tlearn_model_tensor_info(self.raw(), i, &mut name, &mut numel, &mut ndim,
                                              dims.as_mut_ptr())
            })?;
            out.push((cstr_to_string(name),
                      dims[..ndim as usize].iter().map(|&d| d as usize).collect()));
        }
        Ok(out)
    }
    fn tensor_numel(&self, name: &str) -> Result<usize> {
        self.tensors()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, dims)| dims.iter().product())
            .ok_or_else(|| Error::new(status::ENOTFOUND, format!("no tensor named '{name}'")))
    }
    /// Copy of tensor @p name ("fc1.weight").
    pub fn get_tensor(&self, name: &str) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; self.tensor_numel(name)?];
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_get_tensor(self.raw(), c.as_ptr(), out.as_mut_ptr(), out.len()) })?;
        Ok(out)
    }
    /// Overwrite tensor @p name (the slice length must equal its element count).
    pub fn set_tensor(&mut self, name: &str, data: &[f32]) -> Result<()> {
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_set_tensor(self.raw(), c.as_ptr(), data.as_ptr(), data.len()) })
    }
    /// Gradient of parameter @p name from the last step or compute_gradients().
    pub fn get_grad(&self, name: &str) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; self.tensor_numel(name)?];
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_get_grad(self.raw(), c.as_ptr(), out.as_mut_ptr(), out.len()) })?;
        Ok(out)
    }
    pub fn workspace_bytes(&self) -> Result<usize> {
        let mut b = 0;
        check(unsafe { sys::tlearn_model_workspace_bytes(self.raw(), &mut b) })?;
        Ok(b)
    }

    // -- inference and training --------------------------------------------------------
    /// Outputs for a batch (n * output size floats), evaluation mode.
    pub fn predict(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        let n = batch_len(x.len(), self.input_shape()?.size(), "x")?;
        let mut out = vec![0.0f32; n * self.output_shape()?.size()];
        check(unsafe { sys::tlearn_model_predict(self.raw(), x.as_ptr(), n, out.as_mut_ptr(), out.len()) })?;
        Ok(out)
    }
    /// Number of model inputs.
    pub fn input_count(&self) -> Result<usize> {
        let mut n = 0;
        check(unsafe { sys::tlearn_model_input_count(self.raw(), &mut n) })?;
        Ok(n as usize)
    }
    /// Name and whether model input @p k holds int32 (token ids).
    pub fn input_info(&self, k: usize) -> Result<(String, bool)> {
        let (mut name, mut dtype) = (ptr::null(), 0);
        check(unsafe { sys::tlearn_model_input_info(self.raw(), k as c_int, &mut name, &mut dtype) })?;
        Ok((cstr_to_string(name), dtype == sys::TLEARN_DTYPE_INT32))
    }
    /// Declare the graph outputs by layer name; an empty slice restores the last layer.
    pub fn set_outputs(&mut self, layers: &[&str]) -> Result<&mut Self> {
        let names = layers.iter().map(|l| cstring(l, "layer")).collect::<Result<Vec<_>>>()?;
        let ptrs: Vec<*const c_char> = names.iter().map(|c| c.as_ptr()).collect();
        check(unsafe { sys::tlearn_model_set_outputs(self.raw(), ptrs.as_ptr(), ptrs.len() as c_int) })?;
        Ok(self)
    }
    /// Data-parallel training (tlearn_model_set_reducer()): @p reduce starts summing a
    /// bucket of floats in place across @p workers workers, @p wait finishes every sum;
    /// both get @p user. A thin binding: an MPI reducer is a C library (libtlearn-mpi).
    ///
    /// # Safety
    /// The callbacks must follow the C contract, and @p user must stay valid while the
    /// reducer is set (until `clear_reducer` or the model is dropped).
    pub unsafe fn set_reducer(&mut self, reduce: sys::tlearn_reduce_fn,
                              wait: sys::tlearn_reduce_wait_fn, user: *mut c_void,
                              workers: i32, bucket_floats: usize, flags: i32) -> Result<&mut Self> {
        check(sys::tlearn_model_set_reducer(self.raw(), reduce, wait, user, workers,
                                            bucket_floats, flags))?;
        Ok(self)
    }
    /// Remove the reducer: one process again.
    pub fn clear_reducer(&mut self) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_model_set_reducer(self.raw(), None, None,
                                                     std::ptr::null_mut(), 1, 0, 0) })?;
        Ok(self)
    }
    /// Layer index of every graph output, in order.
    pub fn outputs(&self) -> Result<Vec<usize>> {
        let mut n = 0;
        check(unsafe { sys::tlearn_model_output_count(self.raw(), &mut n) })?;
        (0..n).map(|k| {
            let mut i = 0;
            check(unsafe { sys::tlearn_model_output_layer(self.raw(), k, &mut i) })?;
            Ok(i as usize)
        }).collect()
    }
    /// Pointers to one array per model input of n examples each, their sizes checked.
    fn feed(&self, inputs: &[Input], n: usize) -> Result<Vec<*const c_void>> {
        for (k, i) in inputs.iter().enumerate() {
            let size: usize = self.shape_nd_at(-1 - k as c_int)?.iter().product();
            let len = match i { Input::F32(x) => x.len(), Input::I32(x) => x.len() };
            if len != n * size {
                return Err(Error::invalid(format!("input {} holds {} values, expected {}", k, len,
                                                  n * size)));
            }
        }
        Ok(inputs.iter().map(|i| match i {
            Input::F32(x) => x.as_ptr() as *const c_void,
            Input::I32(x) => x.as_ptr() as *const c_void,
        }).collect())
    }
    /// Inference with one array per model input (n examples each); one Vec per output.
    pub fn run(&mut self, inputs: &[Input], n: usize) -> Result<Vec<Vec<f32>>> {
        let ptrs = self.feed(inputs, n)?;
        let mut outs = Vec::new();
        for layer in self.outputs()? {
            let size: usize = self.layer_shape_nd(layer)?.iter().product();
            outs.push(vec![0.0f32; n * size]);
        }
        let optrs: Vec<*mut f32> = outs.iter_mut().map(|o| o.as_mut_ptr()).collect();
        let lens: Vec<usize> = outs.iter().map(|o| o.len()).collect();
        check(unsafe {
            sys::tlearn_model_run(self.raw(), ptrs.as_ptr(), ptrs.len() as c_int, n, optrs.as_ptr(),
                                  lens.as_ptr(), optrs.len() as c_int)
        })?;
        Ok(outs)
    }
    /// One training step (cross-entropy) on a model of several inputs (token ids, masks):
    /// one array per model input, n = labels.len() examples. Returns the loss.
    pub fn train_step_inputs(&mut self, opt: &mut Optimizer, inputs: &[Input], labels: &[i32])
                             -> Result<f32> {
        let ptrs = self.feed(inputs, labels.len())?;
        let mut loss = 0.0f32;
        check(unsafe {
            sys::tlearn_model_train_step_inputs(self.raw(), opt.as_ptr(), ptrs.as_ptr(),
                                                ptrs.len() as c_int, labels.as_ptr(),
                                                labels.len(), &mut loss)
        })?;
        Ok(loss)
    }
    /// n x (positions of output 0) labels for per-position cross-entropy?
    fn check_token_labels(&self, labels: &[i32], n: usize) -> Result<()> {
        let out: Vec<usize> = self.layer_shape_nd(*self.outputs()?.first().unwrap_or(&0))?;
        let positions: usize = out[..out.len().saturating_sub(1)].iter().product();
        if labels.len() != n * positions {
            return Err(Error::invalid(format!("labels has {} values; expected {}", labels.len(),
                                              n * positions)));
        }
        Ok(())
    }
    /// One step of cross-entropy at every position of output 0 (..., classes): @p labels
    /// holds n x positions labels, @p ignore_index marks positions that count for nothing.
    pub fn train_step_tokens(&mut self, opt: &mut Optimizer, inputs: &[Input], labels: &[i32],
                             ignore_index: i32, n: usize) -> Result<f32> {
        let ptrs = self.feed(inputs, n)?;
        self.check_token_labels(labels, n)?;
        let mut loss = 0.0f32;
        check(unsafe {
            sys::tlearn_model_train_step_tokens(self.raw(), opt.as_ptr(), ptrs.as_ptr(),
                                                ptrs.len() as c_int, labels.as_ptr(),
                                                ignore_index, n, &mut loss)
        })?;
        Ok(loss)
    }
    /// The gradients of [`Model::train_step_tokens`]'s loss without an update; the loss.
    pub fn compute_gradients_tokens(&mut self, inputs: &[Input], labels: &[i32],
                                    ignore_index: i32, n: usize) -> Result<f32> {
        let ptrs = self.feed(inputs, n)?;
        self.check_token_labels(labels, n)?;
        let mut loss = 0.0f32;
        check(unsafe {
            sys::tlearn_model_compute_gradients_tokens(self.raw(), ptrs.as_ptr(),
                                                       ptrs.len() as c_int, labels.as_ptr(),
                                                       ignore_index, n, &mut loss)
        })?;
        Ok(loss)
    }
    /// Room for dL/d(first input) of @p n examples when @p want.
    fn input_grad_buffer(&self, n: usize, want: bool) -> Result<Option<Vec<f32>>> {
        Ok(if want {
            Some(vec![0.0f32; n * self.shape_nd_at(-1)?.iter().product::<usize>()])
        } else {
            None
        })
    }
    /// Gradients without an update on a model of several inputs; returns the loss, and
    /// dL/d(first input) when @p input_grad (the first input must be float32).
    pub fn compute_gradients_inputs(&mut self, inputs: &[Input], labels: &[i32],
                                    input_grad: bool) -> Result<(f32, Option<Vec<f32>>)> {
        let n = labels.len();
        let ptrs = self.feed(inputs, n)?;
        let mut loss = 0.0f32;
        let mut dx = self.input_grad_buffer(n, input_grad)?;
        let (p, len) = dx.as_mut().map_or((ptr::null_mut(), 0), |d| (d.as_mut_ptr(), d.len()));
        check(unsafe {
            sys::tlearn_model_compute_gradients_inputs(self.raw(), ptrs.as_ptr(),
                                                       ptrs.len() as c_int, labels.as_ptr(), n,
                                                       &mut loss, p, len)
        })?;
        Ok((loss, dx))
    }
    /// Temperature of the contrastive losses (default 0.05); not saved in checkpoints.
    pub fn set_contrastive_temperature(&mut self, temperature: f32) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_model_set_contrastive_temperature(self.raw(), temperature) })?;
        Ok(self)
    }
    /// One step of the contrastive loss ([`Loss::Contrastive`] or
    /// [`Loss::ContrastiveSymmetric`]) on @p n = 2P rows per input: rows 0..P the anchors,
    /// P..2P their positives in the same order. Returns the loss.
    pub fn train_step_pairs(&mut self, opt: &mut Optimizer, inputs: &[Input], n: usize)
                            -> Result<f32> {
        let ptrs = self.feed(inputs, n)?;
        let mut loss = 0.0f32;
        check(unsafe {
            sys::tlearn_model_train_step_pairs(self.raw(), opt.as_ptr(), ptrs.as_ptr(),
                                               ptrs.len() as c_int, n, &mut loss)
        })?;
        Ok(loss)
    }
    /// The gradients of [`Model::train_step_pairs`]'s loss without an update; the loss, and
    /// dL/d(first input) when @p input_grad (the first input must be float32).
    pub fn compute_gradients_pairs(&mut self, inputs: &[Input], n: usize, input_grad: bool)
                                   -> Result<(f32, Option<Vec<f32>>)> {
        let ptrs = self.feed(inputs, n)?;
        let mut loss = 0.0f32;
        let mut dx = self.input_grad_buffer(n, input_grad)?;
        let (p, len) = dx.as_mut().map_or((ptr::null_mut(), 0), |d| (d.as_mut_ptr(), d.len()));
        check(unsafe {
            sys::tlearn_model_compute_gradients_pairs(self.raw(), ptrs.as_ptr(),
                                                      ptrs.len() as c_int, n, &mut loss, p, len)
        })?;
        Ok((loss, dx))
    }
    /// Gradient reversal (DANN): identity forward, gradient times -lambda backward.
    pub fn add_grad_reverse(&mut self, name: &str, lambda: f32) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe { sys::tlearn_model_add_grad_reverse(self.raw(), c.as_ptr(), lambda) })?;
        Ok(self)
    }
    /// Lambda of gradient-reversal layer `layer`, or of every one with `None`.
    pub fn set_grad_reverse_lambda(&mut self, layer: Option<&str>, lambda: f32) -> Result<&mut Self> {
        let c = layer.map(|l| cstring(l, "layer")).transpose()?;
        let p = c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        check(unsafe { sys::tlearn_model_set_grad_reverse_lambda(self.raw(), p, lambda) })?;
        Ok(self)
    }
    /// The loss of graph output `output` (position) for [`Model::train_step_multi`]; `None`
    /// removes it.
    pub fn set_output_loss(&mut self, output: usize, loss: Option<Loss>, weight: f32) -> Result<&mut Self> {
        let k = loss.map_or(0, |l| l as c_int);
        check(unsafe { sys::tlearn_model_set_output_loss(self.raw(), output as c_int, k, weight) })?;
        Ok(self)
    }
    /// A discrepancy term between source and target rows at `layer` (weight 0 removes it).
    pub fn set_discrepancy(&mut self, layer: &str, kind: Discrepancy, weight: f32) -> Result<&mut Self> {
        let c = cstring(layer, "layer")?;
        check(unsafe { sys::tlearn_model_set_discrepancy(self.raw(), c.as_ptr(), kind as c_int, weight) })?;
        Ok(self)
    }
    /// MMD's bandwidth multipliers of the mean squared distance (empty: 1/4, 1/2, 1, 2, 4).
    pub fn set_mmd_bandwidths(&mut self, multipliers: &[f32]) -> Result<&mut Self> {
        let p = if multipliers.is_empty() { std::ptr::null() } else { multipliers.as_ptr() };
        check(unsafe { sys::tlearn_model_set_mmd_bandwidths(self.raw(), p, multipliers.len() as c_int) })?;
        Ok(self)
    }
    /// One step with every output's loss and the discrepancy terms; `is_target` marks target
    /// rows (None: rows whose output-0 label is -1). Returns the total loss.
    pub fn train_step_multi(&mut self, opt: &mut Optimizer, inputs: &[Input], n: usize,
                            targets: &[Target], is_target: Option<&[u8]>) -> Result<f32> {
        let ptrs = self.feed(inputs, n)?;
        let outs = self.outputs()?;
        if targets.len() != outs.len() {
            return Err(Error::invalid(format!("{} targets for {} outputs", targets.len(), outs.len())));
        }
        let mut tp = Vec::new();
        for (t, layer) in targets.iter().zip(outs) {
            let size: usize = self.layer_shape_nd(layer)?.iter().product();
            tp.push(match t {
                Target::None => std::ptr::null(),
                Target::Labels(y) if y.len() == n => y.as_ptr() as *const c_void,
                Target::Values(v) if v.len() == n * size => v.as_ptr() as *const c_void,
                _ => return Err(Error::invalid("targets of the wrong length".to_string())),
            });
        }
        if is_target.map_or(false, |t| t.len() != n) {
            return Err(Error::invalid("is_target needs one value per row".to_string()));
        }
        let mut loss = 0.0f32;
        check(unsafe {
            sys::tlearn_model_train_step_multi(self.raw(), opt.as_ptr(), ptrs.as_ptr(), ptrs.len() as c_int,
                                               n, tp.as_ptr(), tp.len() as c_int,
                                               is_target.map_or(std::ptr::null(), |t| t.as_ptr()), &mut loss)
        })?;
        Ok(loss)
    }
    /// AdaBN: every BatchNorm's running statistics re-estimated on these arrays (batches of
    /// `batch`, averaged as torch's momentum=None).
    pub fn adapt_bn(&mut self, inputs: &[Input], n: usize, batch: usize) -> Result<&mut Self> {
        let ptrs = self.feed(inputs, n)?;
        check(unsafe { sys::tlearn_model_adapt_bn(self.raw(), ptrs.as_ptr(), ptrs.len() as c_int, n, batch) })?;
        Ok(self)
    }
    /// TENT: one entropy-minimisation step on BatchNorm's weight and bias; returns the
    /// batch's mean entropy. Undo with [`Model::tent_reset`].
    pub fn tent_step(&mut self, opt: &mut Optimizer, inputs: &[Input], n: usize) -> Result<f32> {
        let ptrs = self.feed(inputs, n)?;
        let mut h = 0.0f32;
        check(unsafe {
            sys::tlearn_model_tent_step(self.raw(), opt.as_ptr(), ptrs.as_ptr(), ptrs.len() as c_int, n, &mut h)
        })?;
        Ok(h)
    }
    /// Restore BatchNorm tensors and freeze state from before the first tent_step.
    pub fn tent_reset(&mut self) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_model_tent_reset(self.raw()) })?;
        Ok(self)
    }
    /// (mean loss, accuracy) over a labelled set.
    pub fn evaluate(&mut self, x: &[f32], labels: &[i32]) -> Result<(f32, f32)> {
        let n = batch_len(x.len(), self.input_shape()?.size(), "x")?;
        labels_len(labels, n)?;
        let (mut loss, mut acc) = (0.0f32, 0.0f32);
        check(unsafe {
            sys::tlearn_model_evaluate(self.raw(), x.as_ptr(), labels.as_ptr(), n, &mut loss, &mut acc)
        })?;
        Ok((loss, acc))
    }
    /// One optimisation step (cross-entropy); returns loss + penalty.
    pub fn train_step(&mut self, opt: &mut Optimizer, x: &[f32], labels: &[i32]) -> Result<f32> {
        let n = batch_len(x.len(), self.input_shape()?.size(), "x")?;
        labels_len(labels, n)?;
        let mut loss = 0.0f32;
        check(unsafe {
            sys::tlearn_model_train_step(self.raw(), opt.as_ptr(), x.as_ptr(), labels.as_ptr(), n, &mut loss)
        })?;
        Ok(loss)
    }
    /// One step against float targets (the loss must be [`Loss::Mse`]).
    pub fn train_step_mse(&mut self, opt: &mut Optimizer, x: &[f32], targets: &[f32]) -> Result<f32> {
        let n = batch_len(x.len(), self.input_shape()?.size(), "x")?;
        if targets.len() != n * self.output_shape()?.size() {
            return Err(Error::invalid(format!("targets has {} floats; expected {}",
                                              targets.len(), n * self.output_shape()?.size())));
        }
        let mut loss = 0.0f32;
        check(unsafe {
            sys::tlearn_model_train_step_mse(self.raw(), opt.as_ptr(), x.as_ptr(), targets.as_ptr(), n, &mut loss)
        })?;
        Ok(loss)
    }
    /// Forward and backward without an update; returns the loss and dL/dx.
    pub fn compute_gradients(&mut self, x: &[f32], labels: &[i32]) -> Result<(f32, Vec<f32>)> {
        let n = batch_len(x.len(), self.input_shape()?.size(), "x")?;
        labels_len(labels, n)?;
        let mut loss = 0.0f32;
        let mut dx = vec![0.0f32; x.len()];
        check(unsafe {
            sys::tlearn_model_compute_gradients(self.raw(), x.as_ptr(), labels.as_ptr(), n,
                                                &mut loss, dx.as_mut_ptr(), dx.len())
        })?;
        Ok((loss, dx))
    }
    /// Train for @p epochs in shuffled mini-batches of @p batch.
    pub fn fit(&mut self, opt: &mut Optimizer, x: &[f32], labels: &[i32], batch: usize,
               epochs: i32) -> Result<()> {
        self.fit_with_progress(opt, x, labels, batch, epochs, true, |_| ControlFlow::Continue(()))
            .map(|_| ())
    }
    /// As [`Model::fit`], calling @p progress after every step. `ControlFlow::Break` stops
    /// training on purpose: the result is then Ok, with [`FitEnd::stopped`] set and the
    /// epochs and steps that ran (the weights are those of the last step). A panic in
    /// @p progress stops training and is resumed.
    #[allow(clippy::too_many_arguments)]
    pub fn fit_with_progress<F>(&mut self, opt: &mut Optimizer, x: &[f32], labels: &[i32],
                                batch: usize, epochs: i32, shuffle: bool, mut progress: F)
                                -> Result<FitEnd>
    where
        F: FnMut(&Progress) -> ControlFlow<()>,
    {
        let n = batch_len(x.len(), self.input_shape()?.size(), "x")?;
        labels_len(labels, n)?;
        let mut state = ProgressState { f: &mut progress, panic: None, stopped: false, last: None };
        let rc = unsafe {
            sys::tlearn_model_fit(self.raw(), opt.as_ptr(), x.as_ptr(), labels.as_ptr(), n,
                                  batch, epochs, shuffle as c_int,
                                  Some(progress_trampoline::<F>),
                                  &mut state as *mut ProgressState<F> as *mut c_void)
        };
        if let Some(payload) = state.panic.take() {
            panic::resume_unwind(payload);
        }
        if !(state.stopped && rc == status::ECANCELED) {
            check(rc)?;
        }
        let (epochs_completed, steps) = match state.last {
            Some((e, s, per)) => (if s + 1 == per { e + 1 } else { e }, e * per + s + 1),
            None => (0, 0),
        };
        Ok(FitEnd { epochs_completed, steps, stopped: state.stopped })
    }

    /// Train with validation, early stopping and the rest of @p options (tlearn_model_fit_run);
    /// @p on_epoch sees each epoch's record. Returns the record of every epoch that ran:
    /// `ControlFlow::Break` stops training on purpose and is Ok too (the records then end
    /// with the epoch that stopped it; the best weights are restored when the options ask).
    /// A panic in @p on_epoch stops training and is resumed.
    pub fn fit_run<F>(&mut self, opt: &mut Optimizer, options: &mut FitOptions, x: &[f32],
                      y: Targets<'_>, validation: Option<(&[f32], Targets<'_>)>,
                      mut on_epoch: F) -> Result<Vec<EpochRecord>>
    where
        F: FnMut(&EpochRecord) -> ControlFlow<()>,
    {
        let n = batch_len(x.len(), self.input_shape()?.size(), "x")?;
        let fo = options.ptr.as_ptr();
        let (vx, vxl, vy, vyl, vn) = match validation {
            Some((vx, vy)) => {
                let (p, l) = vy.raw();
                let vn = batch_len(vx.len(), self.input_shape()?.size(), "validation x")?;
                (vx.as_ptr(), vx.len(), p, l, vn)
            }
            None => (ptr::null(), 0, ptr::null(), 0, 0),
        };
        check(unsafe { sys::tlearn_fit_set_validation(fo, vx, vxl, vy, vyl, vn) })?;
        let mut state = EpochState { f: &mut on_epoch, records: Vec::new(), panic: None,
                                     stopped: false };
        let rc = unsafe {
            sys::tlearn_fit_set_callbacks(fo, None, Some(epoch_trampoline::<F>),
                                          &mut state as *mut EpochState<F> as *mut c_void);
            let rc = sys::tlearn_model_fit_run(self.raw(), opt.as_ptr(), fo, x.as_ptr(), y.raw().0, n);
            // the options must not keep pointers to this call's data
            sys::tlearn_fit_set_callbacks(fo, None, None, ptr::null_mut());
            sys::tlearn_fit_set_validation(fo, ptr::null(), 0, ptr::null(), 0, 0);
            rc
        };
        if let Some(payload) = state.panic.take() {
            panic::resume_unwind(payload);
        }
        if !(state.stopped && rc == status::ECANCELED) {
            check(rc)?;
        }
        Ok(state.records)
    }
    /// Class weights of the cross-entropy (None clears them).
    pub fn set_class_weights(&mut self, weights: Option<&[f32]>) -> Result<&mut Self> {
        let (p, n) = weights.map_or((ptr::null(), 0), |w| (w.as_ptr(), w.len()));
        check(unsafe { sys::tlearn_model_set_class_weights(self.raw(), p, n) })?;
        Ok(self)
    }
    /// Label smoothing of the cross-entropy, in [0, 1].
    pub fn set_label_smoothing(&mut self, smoothing: f32) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_model_set_label_smoothing(self.raw(), smoothing) })?;
        Ok(self)
    }
    /// Top-k accuracy, confusion matrix and per-class precision/recall/F1.
    pub fn evaluate_classes(&mut self, x: &[f32], labels: &[i32], k: i32) -> Result<ClassMetrics> {
        let n = batch_len(x.len(), self.input_shape()?.size(), "x")?;
        labels_len(labels, n)?;
        let c = self.output_shape()?.size();
        let mut m = ClassMetrics { top_k: 0.0, confusion: vec![0; c * c], precision: vec![0.0; c],
                                   recall: vec![0.0; c], f1: vec![0.0; c] };
        check(unsafe {
            sys::tlearn_model_evaluate_classes(self.raw(), x.as_ptr(), labels.as_ptr(), n, k,
                                               &mut m.top_k, m.confusion.as_mut_ptr(),
                                               m.precision.as_mut_ptr(), m.recall.as_mut_ptr(),
                                               m.f1.as_mut_ptr(), c)
        })?;
        Ok(m)
    }
    /// (mse, mae) against float targets.
    pub fn evaluate_regression(&mut self, x: &[f32], targets: &[f32]) -> Result<(f32, f32)> {
        let n = batch_len(x.len(), self.input_shape()?.size(), "x")?;
        let (mut mse, mut mae) = (0.0f32, 0.0f32);
        check(unsafe {
            sys::tlearn_model_evaluate_regression(self.raw(), x.as_ptr(), targets.as_ptr(), n,
                                                  &mut mse, &mut mae)
        })?;
        Ok((mse, mae))
    }

    // -- transfer learning --------------------------------------------------------------
    /// Apply a freeze policy (None unfreezes everything and resets LR scales).
    pub fn apply_freeze(&mut self, policy: Option<&FreezePolicy>) -> Result<&mut Self> {
        let p = policy.map_or(ptr::null(), |f| f.as_ptr() as *const _);
        check(unsafe { sys::tlearn_model_apply_freeze(self.raw(), p) })?;
        Ok(self)
    }
    pub fn layer_frozen(&self, layer: &str) -> Result<bool> {
        let c = cstring(layer, "layer")?;
        let mut f = 0;
        check(unsafe { sys::tlearn_model_layer_frozen(self.raw(), c.as_ptr(), &mut f) })?;
        Ok(f != 0)
    }
    /// Whether tensor "layer.param" gets no update (its layer or itself frozen, or a buffer).
    pub fn tensor_frozen(&self, tensor: &str) -> Result<bool> {
        let c = cstring(tensor, "tensor")?;
        let mut f = 0;
        check(unsafe { sys::tlearn_model_tensor_frozen(self.raw(), c.as_ptr(), &mut f) })?;
        Ok(f != 0)
    }
    pub fn layer_lr_scale(&self, layer: &str) -> Result<f32> {
        let c = cstring(layer, "layer")?;
        let mut s = 0.0f32;
        check(unsafe { sys::tlearn_model_layer_lr_scale(self.raw(), c.as_ptr(), &mut s) })?;
        Ok(s)
    }
    /// Activations of @p layer for a batch (n * layer output size floats).
    pub fn features(&mut self, layer: &str, x: &[f32]) -> Result<Vec<f32>> {
        let n = batch_len(x.len(), self.input_shape()?.size(), "x")?;
        let mut out = vec![0.0f32; n * self.named_shape(layer)?.size()];
        let c = cstring(layer, "layer")?;
        check(unsafe {
            sys::tlearn_model_features(self.raw(), c.as_ptr(), x.as_ptr(), n, out.as_mut_ptr(), out.len())
        })?;
        Ok(out)
    }
    /// One step of the layers after @p layer from its cached activations.
    pub fn train_step_from(&mut self, opt: &mut Optimizer, layer: &str, features: &[f32],
                           labels: &[i32]) -> Result<f32> {
        let n = batch_len(features.len(), self.named_shape(layer)?.size(), "features")?;
        labels_len(labels, n)?;
        let c = cstring(layer, "layer")?;
        let mut loss = 0.0f32;
        check(unsafe {
            sys::tlearn_model_train_step_from(self.raw(), opt.as_ptr(), c.as_ptr(), features.as_ptr(),
                                              labels.as_ptr(), n, &mut loss)
        })?;
        Ok(loss)
    }
    /// Outputs from cached activations of @p layer.
    pub fn predict_from(&mut self, layer: &str, features: &[f32]) -> Result<Vec<f32>> {
        let n = batch_len(features.len(), self.named_shape(layer)?.size(), "features")?;
        let mut out = vec![0.0f32; n * self.output_shape()?.size()];
        let c = cstring(layer, "layer")?;
        check(unsafe {
            sys::tlearn_model_predict_from(self.raw(), c.as_ptr(), features.as_ptr(), n,
                                           out.as_mut_ptr(), out.len())
        })?;
        Ok(out)
    }
    /// Drop the layers after @p from_layer and append a new dense head "head".
    pub fn replace_head(&mut self, from_layer: &str, classes: i32) -> Result<&mut Self> {
        let c = cstring(from_layer, "from_layer")?;
        check(unsafe { sys::tlearn_model_replace_head(self.raw(), c.as_ptr(), classes) })?;
        Ok(self)
    }
    /// Drop every layer after @p layer (None drops all).
    pub fn truncate(&mut self, layer: Option<&str>) -> Result<&mut Self> {
        let c = layer.map(|l| cstring(l, "layer")).transpose()?;
        let p = c.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        check(unsafe { sys::tlearn_model_truncate(self.raw(), p) })?;
        Ok(self)
    }

    // -- continual learning ------------------------------------------------------------
    pub fn ewc_set_mode(&mut self, mode: EwcMode) -> Result<&mut Self> {
        let (m, g) = match mode {
            EwcMode::Separate => (sys::TLEARN_EWC_SEPARATE, 1.0),
            EwcMode::Online(gamma) => (sys::TLEARN_EWC_ONLINE, gamma),
        };
        check(unsafe { sys::tlearn_ewc_set_mode(self.raw(), m, g) })?;
        Ok(self)
    }
    /// Estimate the Fisher on a labelled set and anchor the current weights.
    pub fn ewc_consolidate(&mut self, x: &[f32], labels: &[i32], estimator: Fisher,
                           lambda: f32) -> Result<&mut Self> {
        let n = batch_len(x.len(), self.input_shape()?.size(), "x")?;
        labels_len(labels, n)?;
        check(unsafe {
            sys::tlearn_ewc_consolidate(self.raw(), x.as_ptr(), labels.as_ptr(), n,
                                        estimator as c_int, lambda)
        })?;
        Ok(self)
    }
    pub fn l2sp_enable(&mut self, alpha: f32, beta: f32) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_l2sp_enable(self.raw(), alpha, beta) })?;
        Ok(self)
    }
    pub fn ewc_clear(&mut self) -> Result<&mut Self> {
        check(unsafe { sys::tlearn_ewc_clear(self.raw()) })?;
        Ok(self)
    }
    /// The current EWC + L2-SP penalty.
    pub fn penalty(&self) -> Result<f32> {
        let mut p = 0.0f32;
        check(unsafe { sys::tlearn_model_penalty(self.raw(), &mut p) })?;
        Ok(p)
    }
    /// Fisher diagonal of parameter @p name for task @p task.
    pub fn ewc_fisher(&self, task: i32, name: &str) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; self.tensor_numel(name)?];
        let c = cstring(name, "name")?;
        check(unsafe {
            sys::tlearn_ewc_get_fisher(self.raw(), task, c.as_ptr(), out.as_mut_ptr(), out.len())
        })?;
        Ok(out)
    }

    // -- files -------------------------------------------------------------------------
    /// Save a full checkpoint crash-safely (with optimizer state when given).
    pub fn save(&self, path: impl AsRef<Path>, opt: Option<&Optimizer>) -> Result<()> {
        self.save_with(path, opt, SaveOptions::default())
    }
    pub fn save_with(&self, path: impl AsRef<Path>, opt: Option<&Optimizer>,
                     options: SaveOptions) -> Result<()> {
        let flags = save_flags(options)?;
        let c = cpath(path.as_ref())?;
        let o = opt.map_or(ptr::null(), |o| o.as_ptr() as *const _);
        check(unsafe { sys::tlearn_model_save(self.raw(), o, c.as_ptr(), flags) })
    }
    /// The bytes [`Model::save`] would write: a full checkpoint (with `opt`'s
    /// hyperparameters when given).
    pub fn to_bytes(&self, opt: Option<&Optimizer>) -> Result<Vec<u8>> {
        self.to_bytes_with(opt, SaveOptions::default())
    }
    /// The bytes [`Model::save_with`] would write.
    pub fn to_bytes_with(&self, opt: Option<&Optimizer>, options: SaveOptions) -> Result<Vec<u8>> {
        let flags = save_flags(options)?;
        let o = opt.map_or(ptr::null(), |o| o.as_ptr() as *const _);
        take_buffer(|data, size| unsafe {
            sys::tlearn_model_save_buffer(self.raw(), o, flags, data, size)
        })
    }
    /// [`Model::load_weights`] from checkpoint bytes; returns (matched, skipped).
    pub fn load_weights_bytes(&mut self, data: &[u8], strict: bool) -> Result<(usize, usize)> {
        let flags = if strict { sys::TLEARN_LOAD_STRICT } else { sys::TLEARN_LOAD_PARTIAL };
        let (mut m, mut s) = (0, 0);
        check(unsafe {
            sys::tlearn_model_load_weights_buffer(self.raw(), data.as_ptr() as *const c_void,
                                                  data.len(), flags, &mut m, &mut s)
        })?;
        Ok((m, s))
    }
    /// Load weights by name from a checkpoint; returns (matched, skipped).
    pub fn load_weights(&mut self, path: impl AsRef<Path>, strict: bool) -> Result<(usize, usize)> {
        let c = cpath(path.as_ref())?;
        let flags = if strict { sys::TLEARN_LOAD_STRICT } else { sys::TLEARN_LOAD_PARTIAL };
        let (mut m, mut s) = (0, 0);
        check(unsafe { sys::tlearn_model_load_weights(self.raw(), c.as_ptr(), flags, &mut m, &mut s) })?;
        Ok((m, s))
    }
    pub fn set_metadata(&mut self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (cstring(key, "key")?, cstring(value, "value")?);
        check(unsafe { sys::tlearn_model_set_metadata(self.raw(), k.as_ptr(), v.as_ptr()) })
    }
    pub fn get_metadata(&self, key: &str) -> Result<String> {
        let k = cstring(key, "key")?;
        let mut v = ptr::null();
        check(unsafe { sys::tlearn_model_get_metadata(self.raw(), k.as_ptr(), &mut v) })?;
        Ok(cstr_to_string(v))
    }
    /// Load PyTorch weights from a safetensors file with identical names; returns how many
    /// tensors were loaded.
    pub fn import_safetensors(&mut self, path: impl AsRef<Path>, strict: bool) -> Result<usize> {
        let c = cpath(path.as_ref())?;
        let m = self.raw();
        import_st::<NoMap, _>(strict, None, |map, user, flags, matched| unsafe {
            sys::tlearn_model_import_safetensors(m, c.as_ptr(), map, user, flags, matched)
        })
    }
    /// As [`Model::import_safetensors`], mapping each file name to a model name (None skips).
    pub fn import_safetensors_mapped<F>(&mut self, path: impl AsRef<Path>, strict: bool,
                                        mut map: F) -> Result<usize>
    where
        F: FnMut(&str) -> Option<String>,
    {
        let c = cpath(path.as_ref())?;
        let m = self.raw();
        import_st(strict, Some(&mut map), |map, user, flags, matched| unsafe {
            sys::tlearn_model_import_safetensors(m, c.as_ptr(), map, user, flags, matched)
        })
    }
    /// [`Model::import_safetensors`] from the bytes of a safetensors file.
    pub fn import_safetensors_bytes(&mut self, data: &[u8], strict: bool) -> Result<usize> {
        let m = self.raw();
        import_st::<NoMap, _>(strict, None, |map, user, flags, matched| unsafe {
            sys::tlearn_model_import_safetensors_buffer(m, data.as_ptr() as *const c_void,
                                                        data.len(), map, user, flags, matched)
        })
    }
    /// [`Model::import_safetensors_mapped`] from the bytes of a safetensors file.
    pub fn import_safetensors_bytes_mapped<F>(&mut self, data: &[u8], strict: bool,
                                              mut map: F) -> Result<usize>
    where
        F: FnMut(&str) -> Option<String>,
    {
        let m = self.raw();
        import_st(strict, Some(&mut map), |map, user, flags, matched| unsafe {
            sys::tlearn_model_import_safetensors_buffer(m, data.as_ptr() as *const c_void,
                                                        data.len(), map, user, flags, matched)
        })
    }
    /// The bytes [`Model::export_safetensors`] would write.
    pub fn export_safetensors_bytes(&self) -> Result<Vec<u8>> {
        take_buffer(|data, size| unsafe {
            sys::tlearn_model_export_safetensors_buffer(self.raw(), data, size)
        })
    }
    /// Write parameters and buffers to a safetensors file.
    pub fn export_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let c = cpath(path.as_ref())?;
        check(unsafe { sys::tlearn_model_export_safetensors(self.raw(), c.as_ptr()) })
    }
    /// Write the model's evaluation graph as an ONNX file (opset 13 to 17, 0 for 17) for
    /// other runtimes: weights as initializers named as the model's tensors, inputs named as
    /// the model's with a symbolic batch "N", outputs the model's outputs. A layer of a kind
    /// with no ONNX mapping gives `TLEARN_EUNSUPPORTED` (the message names every one).
    pub fn export_onnx(&self, path: impl AsRef<Path>, opset: i32) -> Result<()> {
        let c = cpath(path.as_ref())?;
        check(unsafe { sys::tlearn_model_export_onnx(self.raw(), c.as_ptr(), opset) })
    }
    /// [`Model::export_onnx`] into memory.
    pub fn export_onnx_bytes(&self, opset: i32) -> Result<Vec<u8>> {
        take_buffer(|data, size| unsafe {
            sys::tlearn_model_export_onnx_buffer(self.raw(), opset, data, size)
        })
    }

    // -- few-shot without training, transferability (1.1) --

    /// Append an empty prototype head (logits = temperature * cosine to each prototype).
    pub fn add_prototype(&mut self, name: &str, classes: i32, temperature: f32,
                         learn_temperature: bool) -> Result<&mut Self> {
        let c = cstring(name, "name")?;
        check(unsafe {
            sys::tlearn_model_add_prototype(self.raw(), c.as_ptr(), classes, temperature,
                                            learn_temperature as c_int)
        })?;
        Ok(self)
    }
    /// Drop the layers after @p from_layer ("" = the input) and append a prototype head
    /// built from (x, labels); with @p features, x holds @p from_layer's activations.
    #[allow(clippy::too_many_arguments)]
    pub fn prototype_head(&mut self, from_layer: &str, name: &str, x: &[f32], labels: &[i32],
                          classes: i32, temperature: f32, features: bool,
                          learn_temperature: bool) -> Result<&mut Self> {
        let per = if !features { self.input_shape()?.size() }
                  else if from_layer.is_empty() { self.input_shape()?.size() }
                  else { self.named_shape(from_layer)?.size() };
        let n = batch_len(x.len(), per, "x")?;
        labels_len(labels, n)?;
        let (f, c) = (cstring(from_layer, "from_layer")?, cstring(name, "name")?);
        let flags = if features { sys::TLEARN_PROTO_FEATURES } else { 0 }
            | if learn_temperature { sys::TLEARN_PROTO_LEARN_TEMPERATURE } else { 0 };
        check(unsafe {
            sys::tlearn_prototype_head(self.raw(), f.as_ptr(), c.as_ptr(), x.as_ptr(),
                                       labels.as_ptr(), n, classes, temperature, flags)
        })?;
        Ok(self)
    }
    /// Fold more labelled examples into the prototypes (running mean per class); with
    /// @p features, x holds the activations the head reads (labels.len() examples).
    pub fn prototype_update(&mut self, layer: &str, x: &[f32], labels: &[i32], features: bool)
        -> Result<()> {
        let n = if features { labels.len() }
                else { batch_len(x.len(), self.input_shape()?.size(), "x")? };
        labels_len(labels, n)?;
        if features && (n == 0 || x.len() % n != 0) {
            return Err(Error::invalid("features is not labels.len() equal rows".to_string()));
        }
        let c = cstring(layer, "layer")?;
        check(unsafe {
            sys::tlearn_prototype_update(self.raw(), c.as_ptr(), x.as_ptr(), labels.as_ptr(), n,
                                         if features { sys::TLEARN_PROTO_FEATURES } else { 0 })
        })
    }
    /// Append @p count empty classes to a prototype head.
    pub fn prototype_add_classes(&mut self, layer: &str, count: i32) -> Result<()> {
        let c = cstring(layer, "layer")?;
        check(unsafe { sys::tlearn_prototype_add_classes(self.raw(), c.as_ptr(), count) })
    }
    /// Remove class @p cls; later classes move down by one index.
    pub fn prototype_remove_class(&mut self, layer: &str, cls: i32) -> Result<()> {
        let c = cstring(layer, "layer")?;
        check(unsafe { sys::tlearn_prototype_remove_class(self.raw(), c.as_ptr(), cls) })
    }
    /// Turn the prototype head into a dense head initialised from the prototypes.
    pub fn prototype_to_dense(&mut self, layer: &str) -> Result<()> {
        let c = cstring(layer, "layer")?;
        check(unsafe { sys::tlearn_prototype_to_dense(self.raw(), c.as_ptr()) })
    }
    /// L2-normalised activations of @p layer (n * size floats).
    pub fn embed(&mut self, layer: &str, x: &[f32]) -> Result<Vec<f32>> {
        let n = batch_len(x.len(), self.input_shape()?.size(), "x")?;
        let mut out = vec![0.0f32; n * self.named_shape(layer)?.size()];
        let c = cstring(layer, "layer")?;
        check(unsafe {
            sys::tlearn_model_embed(self.raw(), c.as_ptr(), x.as_ptr(), n, out.as_mut_ptr(),
                                    out.len())
        })?;
        Ok(out)
    }
    /// LogME, LEEP (layer = the source logits) or H-score of @p layer for the labelled set.
    pub fn transferability(&mut self, layer: &str, x: &[f32], labels: &[i32], classes: i32,
                           metric: TransferMetric) -> Result<f64> {
        let n = batch_len(x.len(), self.input_shape()?.size(), "x")?;
        labels_len(labels, n)?;
        let c = cstring(layer, "layer")?;
        let mut score = 0.0f64;
        check(unsafe {
            sys::tlearn_transferability(self.raw(), c.as_ptr(), x.as_ptr(), labels.as_ptr(), n,
                                        classes, metric as c_int, &mut score)
        })?;
        Ok(score)
    }
}

/// Transferability metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferMetric {
    LogMe = 1,
    Leep = 2,
    HScore = 3,
}

fn rows(len: usize, dim: usize, what: &str) -> Result<usize> {
    batch_len(len, dim, what)
}

/// Cosine similarities (nq * nkeys, row per query) of rows of @p dim floats.
pub fn similarity_scores(queries: &[f32], keys: &[f32], dim: usize, threads: i32)
    -> Result<Vec<f32>> {
    let (nq, nk) = (rows(queries.len(), dim, "queries")?, rows(keys.len(), dim, "keys")?);
    let mut out = vec![0.0f32; nq * nk];
    check(unsafe {
        sys::tlearn_similarity_scores(queries.as_ptr(), nq, keys.as_ptr(), nk, dim as c_int,
                                      threads, out.as_mut_ptr(), out.len())
    })?;
    Ok(out)
}

/// Exact top-k keys by cosine per query: (indices, scores), nq * k each, best first.
pub fn similarity_topk(queries: &[f32], keys: &[f32], dim: usize, k: usize, threads: i32)
    -> Result<(Vec<i32>, Vec<f32>)> {
    let (nq, nk) = (rows(queries.len(), dim, "queries")?, rows(keys.len(), dim, "keys")?);
    let (mut idx, mut sc) = (vec![0i32; nq * k], vec![0.0f32; nq * k]);
    check(unsafe {
        sys::tlearn_similarity_topk(queries.as_ptr(), nq, keys.as_ptr(), nk, dim as c_int,
                                    k as c_int, threads, idx.as_mut_ptr(), sc.as_mut_ptr())
    })?;
    Ok((idx, sc))
}

/// LogME, LEEP (features = source logits) or H-score of n x @p dim features.
pub fn transferability(features: &[f32], dim: usize, labels: &[i32], classes: i32,
                       metric: TransferMetric) -> Result<f64> {
    let n = rows(features.len(), dim, "features")?;
    labels_len(labels, n)?;
    let mut score = 0.0f64;
    check(unsafe {
        sys::tlearn_transferability_features(features.as_ptr(), n, dim as c_int, labels.as_ptr(),
                                             classes, metric as c_int, &mut score)
    })?;
    Ok(score)
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model").field("layers", &self.layer_names().unwrap_or_default())
            .finish()
    }
}

impl fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Optimizer").field("kind", &self.kind().ok())
            .field("lr", &self.get(OptimParam::Lr).ok()).finish()
    }
}

impl fmt::Debug for FreezePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FreezePolicy").finish_non_exhaustive()
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        let mut p = self.ptr.as_ptr();
        unsafe { sys::tlearn_model_destroy(&mut p) };
    }
}
