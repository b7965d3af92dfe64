//! Raw declarations of libtlearn's C API, written by hand from `include/tlearn/tlearn.h`
//! (no bindgen). Every function is `unsafe`; the safe wrapper is the `tlearn` crate.
//! Status codes, enum values and flags are the header's, fixed forever.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_uint, c_void};

// Status codes.
pub const TLEARN_OK: c_int = 0;
pub const TLEARN_EINVAL: c_int = -1;
pub const TLEARN_ENOMEM: c_int = -2;
pub const TLEARN_ESHAPE: c_int = -3;
pub const TLEARN_ENOTFOUND: c_int = -4;
pub const TLEARN_EIO: c_int = -5;
pub const TLEARN_EFORMAT: c_int = -6;
pub const TLEARN_EUNSUPPORTED: c_int = -7;
pub const TLEARN_ENONFINITE: c_int = -8;
pub const TLEARN_ESTATE: c_int = -9;
pub const TLEARN_EVERSION: c_int = -10;
pub const TLEARN_ECANCELED: c_int = -11;

// enum tlearn_layer_kind
pub const TLEARN_LAYER_DENSE: c_int = 1;
pub const TLEARN_LAYER_FLATTEN: c_int = 2;
pub const TLEARN_LAYER_ACTIVATION: c_int = 3;
pub const TLEARN_LAYER_CONV2D: c_int = 4;
pub const TLEARN_LAYER_MAXPOOL2D: c_int = 5;
pub const TLEARN_LAYER_AVGPOOL2D: c_int = 6;
pub const TLEARN_LAYER_GLOBAL_AVGPOOL: c_int = 7;
pub const TLEARN_LAYER_BATCHNORM: c_int = 8;
pub const TLEARN_LAYER_DROPOUT: c_int = 9;
pub const TLEARN_LAYER_ADD: c_int = 10;
pub const TLEARN_LAYER_CONCAT: c_int = 14;
pub const TLEARN_LAYER_SLICE: c_int = 15;
pub const TLEARN_LAYER_RESHAPE: c_int = 16;
pub const TLEARN_LAYER_TRANSPOSE: c_int = 17;
pub const TLEARN_LAYER_BINARY: c_int = 11;
pub const TLEARN_LAYER_SCALE: c_int = 12;
pub const TLEARN_LAYER_SOFTMAX: c_int = 13;
pub const TLEARN_LAYER_LAYERNORM: c_int = 18;
pub const TLEARN_LAYER_ADAPTIVE_AVGPOOL: c_int = 19;
pub const TLEARN_LAYER_PAD: c_int = 20;
pub const TLEARN_LAYER_MATMUL: c_int = 21;
pub const TLEARN_LAYER_DROP_PATH: c_int = 22;
pub const TLEARN_LAYER_GRAD_REVERSE: c_int = 50;

// enum tlearn_discrepancy
pub const TLEARN_DISCREPANCY_CORAL: c_int = 1;
pub const TLEARN_DISCREPANCY_MMD: c_int = 2;

// enum tlearn_pad_mode
pub const TLEARN_PAD_CONSTANT: c_int = 1;
pub const TLEARN_PAD_REFLECT: c_int = 2;
pub const TLEARN_PAD_EDGE: c_int = 3;
pub const TLEARN_LAYER_EMBEDDING: c_int = 30;
pub const TLEARN_LAYER_POSITION_EMBEDDING: c_int = 31;
pub const TLEARN_LAYER_ATTENTION: c_int = 32;
pub const TLEARN_LAYER_TOKEN_POOL: c_int = 33;
pub const TLEARN_LAYER_PATCH_EMBED: c_int = 34;
pub const TLEARN_LAYER_PROTOTYPE: c_int = 60;
pub const TLEARN_LAYER_LORA_SUM: c_int = 40;
pub const TLEARN_LORA_RSLORA: c_uint = 1;
pub const TLEARN_DTYPE_FLOAT32: c_int = 1;
pub const TLEARN_DTYPE_INT32: c_int = 2;

// enum tlearn_activation
pub const TLEARN_ACT_RELU: c_int = 1;
pub const TLEARN_ACT_TANH: c_int = 2;
pub const TLEARN_ACT_SIGMOID: c_int = 3;
pub const TLEARN_ACT_GELU: c_int = 4;
pub const TLEARN_ACT_RELU6: c_int = 5;
pub const TLEARN_ACT_LEAKY_RELU: c_int = 6;
pub const TLEARN_ACT_HARDSIGMOID: c_int = 7;
pub const TLEARN_ACT_HARDSWISH: c_int = 8;
pub const TLEARN_ACT_SILU: c_int = 9;
pub const TLEARN_ACT_CLIP: c_int = 10;
pub const TLEARN_ACT_GELU_TANH: c_int = 11;

// enum tlearn_binary_op
pub const TLEARN_BINARY_ADD: c_int = 1;
pub const TLEARN_BINARY_SUB: c_int = 2;
pub const TLEARN_BINARY_MUL: c_int = 3;
pub const TLEARN_BINARY_DIV: c_int = 4;

// enum tlearn_loss
pub const TLEARN_LOSS_SOFTMAX_CE: c_int = 1;
pub const TLEARN_LOSS_MSE: c_int = 2;
pub const TLEARN_LOSS_CONTRASTIVE: c_int = 3;
pub const TLEARN_LOSS_CONTRASTIVE_SYMMETRIC: c_int = 4;

// enum tlearn_optim_kind
pub const TLEARN_SGD: c_int = 1;
pub const TLEARN_ADAM: c_int = 2;
pub const TLEARN_ADAMW: c_int = 3;

// enum tlearn_reduce_flag
pub const TLEARN_REDUCE_EVALUATE: c_int = 1;
pub const TLEARN_REDUCE_FISHER: c_int = 2;
pub const TLEARN_REDUCE_BATCHNORM: c_int = 4;

// enum tlearn_optim_param
pub const TLEARN_OPT_LR: c_int = 1;
pub const TLEARN_OPT_MOMENTUM: c_int = 2;
pub const TLEARN_OPT_DAMPENING: c_int = 3;
pub const TLEARN_OPT_NESTEROV: c_int = 4;
pub const TLEARN_OPT_WEIGHT_DECAY: c_int = 5;
pub const TLEARN_OPT_BETA1: c_int = 6;
pub const TLEARN_OPT_BETA2: c_int = 7;
pub const TLEARN_OPT_EPS: c_int = 8;
pub const TLEARN_OPT_CLIP_NORM: c_int = 9;

// enum tlearn_fisher, enum tlearn_ewc_mode
pub const TLEARN_FISHER_EMPIRICAL: c_int = 1;
pub const TLEARN_FISHER_EXACT: c_int = 2;
pub const TLEARN_FISHER_SAMPLED: c_int = 3;
pub const TLEARN_EWC_SEPARATE: c_int = 1;
pub const TLEARN_EWC_ONLINE: c_int = 2;

// Save and load flags.
pub const TLEARN_SAVE_FULL: c_uint = 0;
pub const TLEARN_SAVE_INFERENCE: c_uint = 1;
/// zlib level 1..9 for each tensor (0: stored raw).
pub const fn tlearn_save_compress(level: c_uint) -> c_uint {
    (level & 15) << 8
}
pub const TLEARN_LOAD_STRICT: c_uint = 0;
pub const TLEARN_LOAD_PARTIAL: c_uint = 1;
pub const TLEARN_PROTO_FEATURES: c_uint = 1;
pub const TLEARN_PROTO_LEARN_TEMPERATURE: c_uint = 2;
pub const TLEARN_TRANSFER_LOGME: c_int = 1;
pub const TLEARN_TRANSFER_LEEP: c_int = 2;
pub const TLEARN_TRANSFER_HSCORE: c_int = 3;

/// Opaque handles: only ever used behind pointers.
#[repr(C)]
pub struct tlearn_model {
    _private: [u8; 0],
}
#[repr(C)]
pub struct tlearn_freeze {
    _private: [u8; 0],
}
#[repr(C)]
pub struct tlearn_optim {
    _private: [u8; 0],
}

pub type tlearn_progress_fn = Option<
    unsafe extern "C" fn(
        epoch: c_int,
        epochs: c_int,
        step: usize,
        steps_per_epoch: usize,
        loss: f32,
        user: *mut c_void,
    ) -> c_int,
>;
#[repr(C)]
pub struct tlearn_sched {
    _private: [u8; 0],
}
#[repr(C)]
pub struct tlearn_fit {
    _private: [u8; 0],
}
#[repr(C)]
pub struct tlearn_epoch {
    _private: [u8; 0],
}
pub type tlearn_epoch_fn =
    Option<unsafe extern "C" fn(epoch: *const tlearn_epoch, user: *mut c_void) -> c_int>;

// enum tlearn_sched_kind, tlearn_sched_unit, tlearn_sched_param (1.1)
pub const TLEARN_SCHED_CONSTANT: c_int = 1;
pub const TLEARN_SCHED_STEP: c_int = 2;
pub const TLEARN_SCHED_MULTISTEP: c_int = 3;
pub const TLEARN_SCHED_EXPONENTIAL: c_int = 4;
pub const TLEARN_SCHED_COSINE: c_int = 5;
pub const TLEARN_SCHED_COSINE_RESTARTS: c_int = 6;
pub const TLEARN_SCHED_ONE_CYCLE: c_int = 7;
pub const TLEARN_SCHED_SLANTED_TRIANGULAR: c_int = 8;
pub const TLEARN_SCHED_PER_BATCH: c_int = 0;
pub const TLEARN_SCHED_PER_EPOCH: c_int = 1;
pub const TLEARN_SCHED_UNIT: c_int = 1;
pub const TLEARN_SCHED_GAMMA: c_int = 2;
pub const TLEARN_SCHED_STEP_SIZE: c_int = 3;
pub const TLEARN_SCHED_PERIOD: c_int = 4;
pub const TLEARN_SCHED_T_MULT: c_int = 5;
pub const TLEARN_SCHED_ETA_MIN: c_int = 6;
pub const TLEARN_SCHED_FACTOR: c_int = 7;
pub const TLEARN_SCHED_TOTAL_STEPS: c_int = 8;
pub const TLEARN_SCHED_PCT_START: c_int = 9;
pub const TLEARN_SCHED_DIV_FACTOR: c_int = 10;
pub const TLEARN_SCHED_FINAL_DIV_FACTOR: c_int = 11;
pub const TLEARN_SCHED_LINEAR_ANNEAL: c_int = 12;
pub const TLEARN_SCHED_THREE_PHASE: c_int = 13;
pub const TLEARN_SCHED_CYCLE_MOMENTUM: c_int = 14;
pub const TLEARN_SCHED_BASE_MOMENTUM: c_int = 15;
pub const TLEARN_SCHED_MAX_MOMENTUM: c_int = 16;
pub const TLEARN_SCHED_CUT_FRAC: c_int = 17;
pub const TLEARN_SCHED_RATIO: c_int = 18;
pub const TLEARN_SCHED_WARMUP_STEPS: c_int = 19;
pub const TLEARN_SCHED_WARMUP_START_FACTOR: c_int = 20;
// enum tlearn_metric, tlearn_fit_param (1.1)
pub const TLEARN_METRIC_LOSS: c_int = 1;
pub const TLEARN_METRIC_ACCURACY: c_int = 2;
pub const TLEARN_METRIC_VAL_LOSS: c_int = 3;
pub const TLEARN_METRIC_VAL_ACCURACY: c_int = 4;
pub const TLEARN_METRIC_VAL_TOP_K: c_int = 5;
pub const TLEARN_METRIC_VAL_MACRO_F1: c_int = 6;
pub const TLEARN_METRIC_VAL_MAE: c_int = 7;
pub const TLEARN_METRIC_LR: c_int = 8;
pub const TLEARN_METRIC_IMPROVED: c_int = 9;
pub const TLEARN_METRIC_TRAINABLE_LAYERS: c_int = 10;
pub const TLEARN_FIT_BATCH: c_int = 1;
pub const TLEARN_FIT_EPOCHS: c_int = 2;
pub const TLEARN_FIT_SHUFFLE: c_int = 3;
pub const TLEARN_FIT_ACCUMULATE: c_int = 4;
pub const TLEARN_FIT_MONITOR: c_int = 5;
pub const TLEARN_FIT_PATIENCE: c_int = 6;
pub const TLEARN_FIT_MIN_DELTA: c_int = 7;
pub const TLEARN_FIT_RESTORE_BEST: c_int = 8;
pub const TLEARN_FIT_GRADUAL_UNFREEZE: c_int = 9;
pub const TLEARN_FIT_TOP_K: c_int = 10;

pub type tlearn_reduce_fn = Option<
    unsafe extern "C" fn(user: *mut c_void, bucket: c_int, data: *mut f32, count: usize) -> c_int,
>;
pub type tlearn_reduce_wait_fn = Option<unsafe extern "C" fn(user: *mut c_void) -> c_int>;
pub type tlearn_metadata_fn = Option<
    unsafe extern "C" fn(key: *const c_char, value: *const c_char, user: *mut c_void) -> c_int,
>;
pub type tlearn_name_map_fn = Option<
    unsafe extern "C" fn(
        file_name: *const c_char,
        out: *mut c_char,
        out_len: usize,
        user: *mut c_void,
    ) -> c_int,
>;

extern "C" {
    pub fn tlearn_strerror(status: c_int) -> *const c_char;
    pub fn tlearn_errmsg() -> *const c_char;
    pub fn tlearn_version_hex() -> c_uint;
    pub fn tlearn_version_string() -> *const c_char;
    pub fn tlearn_blas_info(buf: *mut c_char, cap: usize, reason: *mut c_int) -> c_int;

    // Building a model.
    pub fn tlearn_model_create(out: *mut *mut tlearn_model, channels: c_int, height: c_int,
                               width: c_int) -> c_int;
    pub fn tlearn_model_destroy(m: *mut *mut tlearn_model);
    pub fn tlearn_model_set_threads(m: *mut tlearn_model, threads: c_int) -> c_int;
    pub fn tlearn_model_set_seed(m: *mut tlearn_model, seed: u64) -> c_int;
    pub fn tlearn_model_set_training(m: *mut tlearn_model, training: c_int) -> c_int;
    pub fn tlearn_model_set_loss(m: *mut tlearn_model, loss: c_int) -> c_int;
    pub fn tlearn_model_set_next_input(m: *mut tlearn_model, layer: *const c_char) -> c_int;
    pub fn tlearn_model_add_dense(m: *mut tlearn_model, name: *const c_char, units: c_int)
        -> c_int;
    pub fn tlearn_model_add_flatten(m: *mut tlearn_model, name: *const c_char) -> c_int;
    pub fn tlearn_model_add_linear(m: *mut tlearn_model, name: *const c_char, units: c_int,
                                   bias: c_int) -> c_int;
    pub fn tlearn_model_create_input(out: *mut *mut tlearn_model, name: *const c_char,
                                     dtype: c_int, rank: c_int, dims: *const c_int) -> c_int;
    pub fn tlearn_model_add_input(m: *mut tlearn_model, name: *const c_char, dtype: c_int,
                                  rank: c_int, dims: *const c_int) -> c_int;
    pub fn tlearn_model_input_count(m: *const tlearn_model, count: *mut c_int) -> c_int;
    pub fn tlearn_model_input_info(m: *const tlearn_model, k: c_int, name: *mut *const c_char,
                                   dtype: *mut c_int) -> c_int;
    pub fn tlearn_model_set_outputs(m: *mut tlearn_model, layers: *const *const c_char,
                                    count: c_int) -> c_int;
    pub fn tlearn_model_output_count(m: *const tlearn_model, count: *mut c_int) -> c_int;
    pub fn tlearn_model_set_reducer(m: *mut tlearn_model, reduce: tlearn_reduce_fn,
                                    wait: tlearn_reduce_wait_fn, user: *mut c_void,
                                    workers: c_int, bucket_floats: usize, flags: c_int) -> c_int;
    pub fn tlearn_model_output_layer(m: *const tlearn_model, k: c_int, index: *mut c_int)
        -> c_int;
    pub fn tlearn_model_run(m: *mut tlearn_model, inputs: *const *const c_void, ninputs: c_int,
                            n: usize, outputs: *const *mut f32, out_lens: *const usize,
                            noutputs: c_int) -> c_int;
    pub fn tlearn_model_layer_shape_nd(m: *const tlearn_model, index: c_int, rank: *mut c_int,
                                       dims: *mut c_int, cap: c_int) -> c_int;
    pub fn tlearn_model_add_concat(m: *mut tlearn_model, name: *const c_char,
                                   inputs: *const *const c_char, ninputs: c_int, axis: c_int)
        -> c_int;
    pub fn tlearn_model_add_slice(m: *mut tlearn_model, name: *const c_char, axis: c_int,
                                  start: c_int, end: c_int, step: c_int) -> c_int;
    pub fn tlearn_model_add_reshape(m: *mut tlearn_model, name: *const c_char, rank: c_int,
                                    dims: *const c_int) -> c_int;
    pub fn tlearn_model_add_transpose(m: *mut tlearn_model, name: *const c_char, rank: c_int,
                                      perm: *const c_int) -> c_int;
    pub fn tlearn_model_add_binary(m: *mut tlearn_model, name: *const c_char, op: c_int,
                                   a: *const c_char, b: *const c_char) -> c_int;
    pub fn tlearn_model_add_scale(m: *mut tlearn_model, name: *const c_char, rank: c_int,
                                  dims: *const c_int, bias: c_int) -> c_int;
    pub fn tlearn_model_add_activation_ex(m: *mut tlearn_model, name: *const c_char,
                                          activation: c_int, params: *const f32,
                                          nparams: c_int) -> c_int;
    pub fn tlearn_model_add_softmax(m: *mut tlearn_model, name: *const c_char, axis: c_int)
        -> c_int;
    pub fn tlearn_model_add_embedding(m: *mut tlearn_model, name: *const c_char, vocab: c_int,
                                      dim: c_int, padding_idx: c_int) -> c_int;
    pub fn tlearn_model_add_position_embedding(m: *mut tlearn_model, name: *const c_char,
                                               max_len: c_int, sinusoidal: c_int) -> c_int;
    pub fn tlearn_model_add_attention(m: *mut tlearn_model, name: *const c_char, heads: c_int,
                                      causal: c_int, mask: *const c_char) -> c_int;
    pub fn tlearn_model_add_token_pool(m: *mut tlearn_model, name: *const c_char, mean: c_int,
                                       mask: *const c_char) -> c_int;
    pub fn tlearn_model_add_patch_embed(m: *mut tlearn_model, name: *const c_char, dim: c_int,
                                        patch: c_int, class_token: c_int, positions: c_int)
        -> c_int;
    pub fn tlearn_model_add_transformer_block(m: *mut tlearn_model, name: *const c_char,
                                              heads: c_int, ff_dim: c_int, activation: c_int,
                                              norm_first: c_int, dropout: f32,
                                              mask: *const c_char) -> c_int;
    pub fn tlearn_model_train_step_inputs(m: *mut tlearn_model, o: *mut tlearn_optim,
                                          inputs: *const *const c_void, ninputs: c_int,
                                          labels: *const i32, n: usize, loss: *mut f32) -> c_int;
    pub fn tlearn_model_compute_gradients_inputs(m: *mut tlearn_model,
                                                 inputs: *const *const c_void, ninputs: c_int,
                                                 labels: *const i32, n: usize, loss: *mut f32,
                                                 dx: *mut f32, dx_len: usize) -> c_int;
    pub fn tlearn_model_train_step_tokens(m: *mut tlearn_model, o: *mut tlearn_optim,
                                          inputs: *const *const c_void, ninputs: c_int,
                                          labels: *const i32, ignore_index: i32, n: usize,
                                          loss: *mut f32) -> c_int;
    pub fn tlearn_model_compute_gradients_tokens(m: *mut tlearn_model,
                                                 inputs: *const *const c_void, ninputs: c_int,
                                                 labels: *const i32, ignore_index: i32, n: usize,
                                                 loss: *mut f32) -> c_int;
    pub fn tlearn_model_set_contrastive_temperature(m: *mut tlearn_model, temperature: f32)
                                                    -> c_int;
    pub fn tlearn_model_train_step_pairs(m: *mut tlearn_model, o: *mut tlearn_optim,
                                         inputs: *const *const c_void, ninputs: c_int, n: usize,
                                         loss: *mut f32) -> c_int;
    pub fn tlearn_model_compute_gradients_pairs(m: *mut tlearn_model,
                                                inputs: *const *const c_void, ninputs: c_int,
                                                n: usize, loss: *mut f32, dx: *mut f32,
                                                dx_len: usize) -> c_int;
    pub fn tlearn_lora_add(m: *mut tlearn_model, adapter: *const c_char, glob: *const c_char,
                           r: c_int, alpha: f32, dropout: f32, flags: c_uint) -> c_int;
    pub fn tlearn_lora_set_weight(m: *mut tlearn_model, adapter: *const c_char, weight: f32)
        -> c_int;
    pub fn tlearn_lora_set_active(m: *mut tlearn_model, adapter: *const c_char) -> c_int;
    pub fn tlearn_lora_merge(m: *mut tlearn_model, adapter: *const c_char) -> c_int;
    pub fn tlearn_lora_unmerge(m: *mut tlearn_model, adapter: *const c_char) -> c_int;
    pub fn tlearn_lora_remove(m: *mut tlearn_model, adapter: *const c_char) -> c_int;
    pub fn tlearn_lora_save(m: *const tlearn_model, adapter: *const c_char, dir: *const c_char)
        -> c_int;
    pub fn tlearn_lora_load(m: *mut tlearn_model, adapter: *const c_char, dir: *const c_char)
        -> c_int;
    pub fn tlearn_adapter_add_bottleneck(m: *mut tlearn_model, adapter: *const c_char,
                                         glob: *const c_char, hidden: c_int, activation: c_int)
        -> c_int;
    pub fn tlearn_model_add_activation(m: *mut tlearn_model, name: *const c_char,
                                       activation: c_int, param: f32) -> c_int;
    pub fn tlearn_model_add_conv2d(m: *mut tlearn_model, name: *const c_char, filters: c_int,
                                   kernel: c_int, stride: c_int, pad: c_int, groups: c_int)
        -> c_int;
    pub fn tlearn_model_add_conv2d_ex(m: *mut tlearn_model, name: *const c_char,
                                      filters: c_int, kh: c_int, kw: c_int, sh: c_int,
                                      sw: c_int, ph: c_int, pw: c_int, dh: c_int, dw: c_int,
                                      groups: c_int, bias: c_int) -> c_int;
    pub fn tlearn_model_add_maxpool2d(m: *mut tlearn_model, name: *const c_char,
                                      kernel: c_int, stride: c_int, pad: c_int) -> c_int;
    pub fn tlearn_model_add_avgpool2d(m: *mut tlearn_model, name: *const c_char,
                                      kernel: c_int, stride: c_int, pad: c_int,
                                      count_include_pad: c_int) -> c_int;
    pub fn tlearn_model_add_global_avgpool(m: *mut tlearn_model, name: *const c_char)
        -> c_int;
    pub fn tlearn_model_add_batchnorm(m: *mut tlearn_model, name: *const c_char, eps: f32,
                                      momentum: f32) -> c_int;
    pub fn tlearn_model_add_dropout(m: *mut tlearn_model, name: *const c_char, p: f32)
        -> c_int;
    pub fn tlearn_model_add_add(m: *mut tlearn_model, name: *const c_char,
                                other: *const c_char) -> c_int;
    pub fn tlearn_model_add_layernorm(m: *mut tlearn_model, name: *const c_char, naxes: c_int,
                                      eps: f32, affine: c_int) -> c_int;
    pub fn tlearn_model_add_layernorm_channels(m: *mut tlearn_model, name: *const c_char,
                                               eps: f32, affine: c_int) -> c_int;
    pub fn tlearn_model_add_maxpool2d_ex(m: *mut tlearn_model, name: *const c_char, kh: c_int,
                                         kw: c_int, sh: c_int, sw: c_int, pt: c_int,
                                         pl: c_int, pb: c_int, pr: c_int, dh: c_int,
                                         dw: c_int, ceil_mode: c_int) -> c_int;
    pub fn tlearn_model_add_avgpool2d_ex(m: *mut tlearn_model, name: *const c_char, kh: c_int,
                                         kw: c_int, sh: c_int, sw: c_int, pt: c_int,
                                         pl: c_int, pb: c_int, pr: c_int, ceil_mode: c_int,
                                         count_include_pad: c_int) -> c_int;
    pub fn tlearn_model_add_adaptive_avgpool(m: *mut tlearn_model, name: *const c_char,
                                             oh: c_int, ow: c_int) -> c_int;
    pub fn tlearn_model_add_pad(m: *mut tlearn_model, name: *const c_char, top: c_int,
                                left: c_int, bottom: c_int, right: c_int, mode: c_int,
                                value: f32) -> c_int;
    pub fn tlearn_model_add_matmul(m: *mut tlearn_model, name: *const c_char,
                                   a: *const c_char, b: *const c_char, transpose_b: c_int)
        -> c_int;
    pub fn tlearn_model_add_drop_path(m: *mut tlearn_model, name: *const c_char, p: f32)
        -> c_int;
    // domain adaptation (1.1)
    pub fn tlearn_model_set_output_loss(m: *mut tlearn_model, output: c_int, loss: c_int,
                                        weight: f32) -> c_int;
    pub fn tlearn_model_set_discrepancy(m: *mut tlearn_model, layer: *const c_char, kind: c_int,
                                        weight: f32) -> c_int;
    pub fn tlearn_model_set_mmd_bandwidths(m: *mut tlearn_model, multipliers: *const f32,
                                           count: c_int) -> c_int;
    pub fn tlearn_discrepancy(kind: c_int, features: *const f32, n: usize, dim: usize,
                              is_target: *const u8, multipliers: *const f32, nmult: c_int,
                              value: *mut f32, grad: *mut f32) -> c_int;
    pub fn tlearn_model_train_step_multi(m: *mut tlearn_model, o: *mut tlearn_optim,
                                         inputs: *const *const c_void, ninputs: c_int, n: usize,
                                         targets: *const *const c_void, ntargets: c_int,
                                         is_target: *const u8, loss: *mut f32) -> c_int;
    pub fn tlearn_model_add_grad_reverse(m: *mut tlearn_model, name: *const c_char, lambda: f32)
        -> c_int;
    pub fn tlearn_model_set_grad_reverse_lambda(m: *mut tlearn_model, layer: *const c_char,
                                                lambda: f32) -> c_int;
    pub fn tlearn_dann_lambda(progress: f32) -> f32;
    pub fn tlearn_model_adapt_bn(m: *mut tlearn_model, inputs: *const *const c_void,
                                 ninputs: c_int, n: usize, batch: usize) -> c_int;
    pub fn tlearn_model_tent_step(m: *mut tlearn_model, o: *mut tlearn_optim,
                                  inputs: *const *const c_void, ninputs: c_int, n: usize,
                                  entropy: *mut f32) -> c_int;
    pub fn tlearn_model_tent_reset(m: *mut tlearn_model) -> c_int;

    // Few-shot without training, transferability (1.1).
    pub fn tlearn_model_add_prototype(m: *mut tlearn_model, name: *const c_char, classes: c_int,
                                      temperature: f32, learn_temperature: c_int) -> c_int;
    pub fn tlearn_prototype_head(m: *mut tlearn_model, from_layer: *const c_char,
                                 name: *const c_char, x: *const f32, labels: *const i32,
                                 n: usize, classes: c_int, temperature: f32, flags: c_uint)
        -> c_int;
    pub fn tlearn_prototype_update(m: *mut tlearn_model, layer: *const c_char, x: *const f32,
                                   labels: *const i32, n: usize, flags: c_uint) -> c_int;
    pub fn tlearn_prototype_add_classes(m: *mut tlearn_model, layer: *const c_char,
                                        count: c_int) -> c_int;
    pub fn tlearn_prototype_remove_class(m: *mut tlearn_model, layer: *const c_char,
                                         cls: c_int) -> c_int;
    pub fn tlearn_prototype_to_dense(m: *mut tlearn_model, layer: *const c_char) -> c_int;
    pub fn tlearn_model_embed(m: *mut tlearn_model, layer: *const c_char, x: *const f32,
                              n: usize, out: *mut f32, out_len: usize) -> c_int;
    pub fn tlearn_similarity_scores(queries: *const f32, nq: usize, keys: *const f32,
                                    nkeys: usize, dim: c_int, threads: c_int, out: *mut f32,
                                    out_len: usize) -> c_int;
    pub fn tlearn_similarity_topk(queries: *const f32, nq: usize, keys: *const f32,
                                  nkeys: usize, dim: c_int, k: c_int, threads: c_int,
                                  index: *mut i32, scores: *mut f32) -> c_int;
    pub fn tlearn_transferability(m: *mut tlearn_model, layer: *const c_char, x: *const f32,
                                  labels: *const i32, n: usize, classes: c_int, metric: c_int,
                                  score: *mut f64) -> c_int;
    pub fn tlearn_transferability_features(features: *const f32, n: usize, dim: c_int,
                                           labels: *const i32, classes: c_int, metric: c_int,
                                           score: *mut f64) -> c_int;

    // Introspection.
    pub fn tlearn_model_layer_count(m: *const tlearn_model, count: *mut c_int) -> c_int;
    pub fn tlearn_model_layer_index(m: *const tlearn_model, name: *const c_char,
                                    index: *mut c_int) -> c_int;
    pub fn tlearn_model_layer_name(m: *const tlearn_model, index: c_int,
                                   name: *mut *const c_char) -> c_int;
    pub fn tlearn_model_layer_kind(m: *const tlearn_model, index: c_int, kind: *mut c_int)
        -> c_int;
    pub fn tlearn_model_layer_shape(m: *const tlearn_model, index: c_int, c: *mut c_int,
                                    h: *mut c_int, w: *mut c_int) -> c_int;
    pub fn tlearn_model_layer_param_count(m: *const tlearn_model, index: c_int,
                                          count: *mut usize) -> c_int;
    pub fn tlearn_model_param_count(m: *const tlearn_model, total: *mut usize,
                                    trainable: *mut usize) -> c_int;
    pub fn tlearn_model_tensor_count(m: *const tlearn_model, count: *mut c_int) -> c_int;
    pub fn tlearn_model_tensor_info(m: *const tlearn_model, index: c_int,
                                    name: *mut *const c_char, numel: *mut usize,
                                    ndim: *mut c_int, dims: *mut c_int) -> c_int;
    pub fn tlearn_model_get_tensor(m: *const tlearn_model, name: *const c_char, out: *mut f32,
                                   out_len: usize) -> c_int;
    pub fn tlearn_model_set_tensor(m: *mut tlearn_model, name: *const c_char, data: *const f32,
                                   len: usize) -> c_int;
    pub fn tlearn_model_get_grad(m: *const tlearn_model, name: *const c_char, out: *mut f32,
                                 out_len: usize) -> c_int;
    pub fn tlearn_model_workspace_bytes(m: *const tlearn_model, bytes: *mut usize) -> c_int;

    // Inference and training.
    pub fn tlearn_model_predict(m: *mut tlearn_model, x: *const f32, n: usize, out: *mut f32,
                                out_len: usize) -> c_int;
    pub fn tlearn_model_evaluate(m: *mut tlearn_model, x: *const f32, labels: *const i32,
                                 n: usize, loss: *mut f32, accuracy: *mut f32) -> c_int;
    pub fn tlearn_model_train_step(m: *mut tlearn_model, o: *mut tlearn_optim, x: *const f32,
                                   labels: *const i32, n: usize, loss: *mut f32) -> c_int;
    pub fn tlearn_model_train_step_mse(m: *mut tlearn_model, o: *mut tlearn_optim,
                                       x: *const f32, targets: *const f32, n: usize,
                                       loss: *mut f32) -> c_int;
    pub fn tlearn_model_compute_gradients(m: *mut tlearn_model, x: *const f32,
                                          labels: *const i32, n: usize, loss: *mut f32,
                                          dx: *mut f32, dx_len: usize) -> c_int;
    pub fn tlearn_model_fit(m: *mut tlearn_model, o: *mut tlearn_optim, x: *const f32,
                            labels: *const i32, n: usize, batch: usize, epochs: c_int,
                            shuffle: c_int, progress: tlearn_progress_fn, user: *mut c_void)
        -> c_int;

    // Optimizers.
    pub fn tlearn_optim_create(out: *mut *mut tlearn_optim, kind: c_int) -> c_int;
    pub fn tlearn_optim_destroy(o: *mut *mut tlearn_optim);
    pub fn tlearn_optim_set(o: *mut tlearn_optim, param: c_int, value: f64) -> c_int;
    pub fn tlearn_optim_get(o: *const tlearn_optim, param: c_int, value: *mut f64) -> c_int;
    pub fn tlearn_optim_kind(o: *const tlearn_optim, kind: *mut c_int) -> c_int;

    // Freeze policy, features, heads.
    pub fn tlearn_freeze_create(out: *mut *mut tlearn_freeze) -> c_int;
    pub fn tlearn_freeze_destroy(f: *mut *mut tlearn_freeze);
    pub fn tlearn_freeze_until(f: *mut tlearn_freeze, layer: *const c_char) -> c_int;
    pub fn tlearn_freeze_match(f: *mut tlearn_freeze, glob: *const c_char, frozen: c_int)
        -> c_int;
    pub fn tlearn_freeze_range(f: *mut tlearn_freeze, first: c_int, last: c_int,
                               frozen: c_int) -> c_int;
    pub fn tlearn_freeze_lr_scale(f: *mut tlearn_freeze, glob: *const c_char, scale: f32)
        -> c_int;
    pub fn tlearn_freeze_ulmfit(f: *mut tlearn_freeze, factor: f32) -> c_int;
    pub fn tlearn_freeze_bn_stats(f: *mut tlearn_freeze, frozen: c_int) -> c_int;
    pub fn tlearn_model_apply_freeze(m: *mut tlearn_model, f: *const tlearn_freeze) -> c_int;
    pub fn tlearn_model_layer_frozen(m: *const tlearn_model, layer: *const c_char,
                                     frozen: *mut c_int) -> c_int;
    pub fn tlearn_freeze_tensors(f: *mut tlearn_freeze, glob: *const c_char, frozen: c_int)
        -> c_int;
    pub fn tlearn_model_tensor_frozen(m: *const tlearn_model, tensor: *const c_char,
                                      frozen: *mut c_int) -> c_int;
    pub fn tlearn_model_create_shared(out: *mut *mut tlearn_model, base: *const tlearn_model)
        -> c_int;
    pub fn tlearn_model_tensor_shared(m: *const tlearn_model, tensor: *const c_char,
                                      shared: *mut c_int) -> c_int;
    pub fn tlearn_model_layer_lr_scale(m: *const tlearn_model, layer: *const c_char,
                                       scale: *mut f32) -> c_int;
    pub fn tlearn_model_features(m: *mut tlearn_model, layer: *const c_char, x: *const f32,
                                 n: usize, out: *mut f32, out_len: usize) -> c_int;
    pub fn tlearn_model_train_step_from(m: *mut tlearn_model, o: *mut tlearn_optim,
                                        layer: *const c_char, features: *const f32,
                                        labels: *const i32, n: usize, loss: *mut f32)
        -> c_int;
    pub fn tlearn_model_predict_from(m: *mut tlearn_model, layer: *const c_char,
                                     features: *const f32, n: usize, out: *mut f32,
                                     out_len: usize) -> c_int;
    pub fn tlearn_model_replace_head(m: *mut tlearn_model, from_layer: *const c_char,
                                     classes: c_int) -> c_int;
    pub fn tlearn_model_truncate(m: *mut tlearn_model, layer: *const c_char) -> c_int;

    // Continual learning.
    pub fn tlearn_ewc_set_mode(m: *mut tlearn_model, mode: c_int, gamma: f32) -> c_int;
    pub fn tlearn_ewc_consolidate(m: *mut tlearn_model, x: *const f32, labels: *const i32,
                                  n: usize, estimator: c_int, lambda: f32) -> c_int;
    pub fn tlearn_l2sp_enable(m: *mut tlearn_model, alpha: f32, beta: f32) -> c_int;
    pub fn tlearn_ewc_clear(m: *mut tlearn_model) -> c_int;
    pub fn tlearn_model_penalty(m: *const tlearn_model, penalty: *mut f32) -> c_int;
    pub fn tlearn_ewc_get_fisher(m: *const tlearn_model, task: c_int, name: *const c_char,
                                 out: *mut f32, out_len: usize) -> c_int;

    // Checkpoints and weight interchange.
    pub fn tlearn_model_save(m: *const tlearn_model, o: *const tlearn_optim,
                             path: *const c_char, flags: c_uint) -> c_int;
    pub fn tlearn_model_load(out: *mut *mut tlearn_model, optim: *mut *mut tlearn_optim,
                             path: *const c_char) -> c_int;
    pub fn tlearn_model_load_weights(m: *mut tlearn_model, path: *const c_char, flags: c_uint,
                                     matched: *mut usize, skipped: *mut usize) -> c_int;
    pub fn tlearn_model_set_metadata(m: *mut tlearn_model, key: *const c_char,
                                     value: *const c_char) -> c_int;
    pub fn tlearn_model_get_metadata(m: *const tlearn_model, key: *const c_char,
                                     value: *mut *const c_char) -> c_int;
    pub fn tlearn_checkpoint_read_metadata(path: *const c_char, f: tlearn_metadata_fn,
                                           user: *mut c_void) -> c_int;
    pub fn tlearn_model_import_safetensors(m: *mut tlearn_model, path: *const c_char,
                                           map: tlearn_name_map_fn, user: *mut c_void,
                                           flags: c_uint, matched: *mut usize) -> c_int;
    pub fn tlearn_model_export_safetensors(m: *const tlearn_model, path: *const c_char)
        -> c_int;
    // The same in memory (1.1); buffers the library allocates are released by tlearn_free.
    pub fn tlearn_model_save_buffer(m: *const tlearn_model, o: *const tlearn_optim,
                                    flags: c_uint, data: *mut *mut c_void, size: *mut usize)
        -> c_int;
    pub fn tlearn_free(p: *mut c_void);
    pub fn tlearn_model_load_buffer(out: *mut *mut tlearn_model, optim: *mut *mut tlearn_optim,
                                    data: *const c_void, len: usize) -> c_int;
    pub fn tlearn_model_load_weights_buffer(m: *mut tlearn_model, data: *const c_void,
                                            len: usize, flags: c_uint, matched: *mut usize,
                                            skipped: *mut usize) -> c_int;
    pub fn tlearn_model_export_safetensors_buffer(m: *const tlearn_model,
                                                  data: *mut *mut c_void, size: *mut usize)
        -> c_int;
    pub fn tlearn_model_import_safetensors_buffer(m: *mut tlearn_model, data: *const c_void,
                                                  len: usize, map: tlearn_name_map_fn,
                                                  user: *mut c_void, flags: c_uint,
                                                  matched: *mut usize) -> c_int;
    pub fn tlearn_model_import_onnx(out: *mut *mut tlearn_model, path: *const c_char)
        -> c_int;
    pub fn tlearn_model_import_onnx_buffer(out: *mut *mut tlearn_model, data: *const c_void,
                                           len: usize) -> c_int;
    pub fn tlearn_model_export_onnx(m: *const tlearn_model, path: *const c_char, opset: c_int)
        -> c_int;
    pub fn tlearn_model_export_onnx_buffer(m: *const tlearn_model, opset: c_int,
                                           data: *mut *mut c_void, size: *mut usize) -> c_int;

    // Training recipes (1.1).
    pub fn tlearn_sched_create(out: *mut *mut tlearn_sched, kind: c_int) -> c_int;
    pub fn tlearn_sched_destroy(s: *mut *mut tlearn_sched);
    pub fn tlearn_sched_set(s: *mut tlearn_sched, param: c_int, value: f64) -> c_int;
    pub fn tlearn_sched_get(s: *const tlearn_sched, param: c_int, value: *mut f64) -> c_int;
    pub fn tlearn_sched_set_milestones(s: *mut tlearn_sched, milestones: *const i64,
                                       count: usize) -> c_int;
    pub fn tlearn_optim_set_schedule(o: *mut tlearn_optim, s: *const tlearn_sched) -> c_int;
    pub fn tlearn_optim_schedule_step(o: *mut tlearn_optim) -> c_int;
    pub fn tlearn_optim_schedule_position(o: *const tlearn_optim, steps: *mut i64) -> c_int;
    pub fn tlearn_optim_get_current(o: *const tlearn_optim, param: c_int, value: *mut f64)
        -> c_int;
    pub fn tlearn_model_set_class_weights(m: *mut tlearn_model, weights: *const f32,
                                          count: usize) -> c_int;
    pub fn tlearn_model_set_label_smoothing(m: *mut tlearn_model, smoothing: f32) -> c_int;
    pub fn tlearn_model_evaluate_classes(m: *mut tlearn_model, x: *const f32,
                                         labels: *const i32, n: usize, k: c_int,
                                         topk: *mut f32, confusion: *mut i64,
                                         precision: *mut f32, recall: *mut f32, f1: *mut f32,
                                         classes: usize) -> c_int;
    pub fn tlearn_model_evaluate_regression(m: *mut tlearn_model, x: *const f32,
                                            targets: *const f32, n: usize, mse: *mut f32,
                                            mae: *mut f32) -> c_int;
    pub fn tlearn_fit_create(out: *mut *mut tlearn_fit) -> c_int;
    pub fn tlearn_fit_destroy(f: *mut *mut tlearn_fit);
    pub fn tlearn_fit_set(f: *mut tlearn_fit, param: c_int, value: f64) -> c_int;
    pub fn tlearn_fit_get(f: *const tlearn_fit, param: c_int, value: *mut f64) -> c_int;
    pub fn tlearn_fit_set_validation(f: *mut tlearn_fit, x: *const f32, x_len: usize,
                                     y: *const c_void, y_len: usize, n: usize) -> c_int;
    pub fn tlearn_fit_set_checkpoint(f: *mut tlearn_fit, path: *const c_char) -> c_int;
    pub fn tlearn_fit_set_callbacks(f: *mut tlearn_fit, progress: tlearn_progress_fn,
                                    epoch_end: tlearn_epoch_fn, user: *mut c_void) -> c_int;
    pub fn tlearn_model_fit_run(m: *mut tlearn_model, o: *mut tlearn_optim,
                                f: *const tlearn_fit, x: *const f32, y: *const c_void,
                                n: usize) -> c_int;
    pub fn tlearn_epoch_get(e: *const tlearn_epoch, metric: c_int, value: *mut f64) -> c_int;
    pub fn tlearn_epoch_index(e: *const tlearn_epoch, epoch: *mut c_int, epochs: *mut c_int)
        -> c_int;
}
