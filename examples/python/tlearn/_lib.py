"""Loader and raw ctypes declarations of libtlearn's C API (include/tlearn/tlearn.h).

The shared library is found, in this order, through:
  1. the TLEARN_LIBRARY environment variable (a full path to libtlearn.so.1);
  2. when imported from a libtlearn checkout (examples/python/tlearn), a meson build tree
     of it (build*/lib/libtlearn.so.1, build/ first, skipping sanitizer builds, which
     cannot be loaded into Python);
  3. ``pkg-config --variable=libdir tlearn`` (an installed library; PKG_CONFIG_PATH for a
     custom prefix), when pkg-config is there;
  4. ctypes.util.find_library('tlearn') (ldconfig's cache, LD_LIBRARY_PATH).

Every function of the header is declared here with its argument and result types, so a
wrong call raises a ctypes error in Python instead of corrupting memory. The friendly
classes live in tlearn/__init__.py.
"""
import ctypes
import ctypes.util
import glob
import os
import subprocess
from typing import Iterator, Optional, Tuple

c_int, c_float, c_double, c_char_p, c_size_t, c_void_p, c_uint, c_uint64 = (
    ctypes.c_int, ctypes.c_float, ctypes.c_double, ctypes.c_char_p, ctypes.c_size_t,
    ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint64)
P = ctypes.POINTER
f32p = P(c_float)
i32p = P(ctypes.c_int32)

# Callback types of the header.
PROGRESS_FN = ctypes.CFUNCTYPE(c_int, c_int, c_int, c_size_t, c_size_t, c_float, c_void_p)
METADATA_FN = ctypes.CFUNCTYPE(c_int, c_char_p, c_char_p, c_void_p)
NAME_MAP_FN = ctypes.CFUNCTYPE(c_int, c_char_p, P(ctypes.c_char), c_size_t, c_void_p)
EPOCH_FN = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p)
REDUCE_FN = ctypes.CFUNCTYPE(c_int, c_void_p, c_int, P(c_float), c_size_t)
REDUCE_WAIT_FN = ctypes.CFUNCTYPE(c_int, c_void_p)


def _sanitized(path: str) -> bool:
    """A sanitizer build (tests/sanitize.sh) would abort the interpreter when loaded."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return True
    return b"libasan.so" in data or b"libtsan.so" in data


def _checkout_root() -> Optional[str]:
    """The libtlearn source tree this package sits in (examples/python/tlearn), if any: an
    installed copy (site-packages) has none."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.normpath(os.path.join(here, "..", "..", ".."))
    if (os.path.isfile(os.path.join(root, "meson.build"))
            and os.path.isfile(os.path.join(root, "include", "tlearn", "tlearn.h"))):
        return root
    return None


def _pkg_config_libdir() -> Optional[str]:
    try:
        r = subprocess.run(["pkg-config", "--variable=libdir", "tlearn"], capture_output=True,
                           text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):  # no pkg-config
        return None
    libdir = r.stdout.strip()
    return libdir if r.returncode == 0 and libdir else None


def _candidates() -> Iterator[Tuple[str, bool]]:
    """(path, explicit) pairs in the order of the module docstring."""
    env = os.environ.get("TLEARN_LIBRARY")
    if env:
        # An explicit choice that does not exist is an error, not a reason to look elsewhere.
        yield env, True
        return
    root = _checkout_root()
    if root is not None:
        found = glob.glob(os.path.join(root, "build*", "lib", "libtlearn.so.1"))
        # build/ (the README's directory) first, then the others by name
        for path in sorted(found, key=lambda p: (os.path.basename(os.path.dirname(
                os.path.dirname(p))) != "build", p)):
            if not _sanitized(path):
                yield path, False
    libdir = _pkg_config_libdir()
    if libdir is not None and os.path.exists(os.path.join(libdir, "libtlearn.so.1")):
        yield os.path.join(libdir, "libtlearn.so.1"), False
    found = ctypes.util.find_library("tlearn")
    if found:
        yield found, False


def load_library() -> ctypes.CDLL:
    """Return the loaded libtlearn (ctypes.CDLL) with every function declared."""
    tried = []
    for path, explicit in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            if explicit:
                raise OSError("TLEARN_LIBRARY=%s cannot be loaded: %s" % (path, e)) from e
            tried.append("%s (%s)" % (path, e))
            continue
        _declare(lib)
        return lib
    raise OSError("libtlearn not found: set TLEARN_LIBRARY to libtlearn.so.1, build it in "
                  "this checkout (meson setup build && ninja -C build), or install it "
                  "(found through pkg-config or ldconfig). Tried: %s"
                  % (", ".join(tried) or "nothing"))


# name: (restype, [argtypes]); every function returns int unless stated.
_M = c_void_p  # tlearn_model *
_PM = P(c_void_p)  # tlearn_model ** (also freeze/optim)
_SIGNATURES = {
    "tlearn_strerror": (c_char_p, [c_int]),
    "tlearn_errmsg": (c_char_p, []),
    "tlearn_version_hex": (c_uint, []),
    "tlearn_version_string": (c_char_p, []),
    "tlearn_blas_info": (c_int, [c_char_p, c_size_t, P(c_int)]),
    # building
    "tlearn_model_create": (c_int, [_PM, c_int, c_int, c_int]),
    "tlearn_model_destroy": (None, [_PM]),
    "tlearn_model_set_threads": (c_int, [_M, c_int]),
    "tlearn_model_set_seed": (c_int, [_M, c_uint64]),
    "tlearn_model_set_training": (c_int, [_M, c_int]),
    "tlearn_model_set_loss": (c_int, [_M, c_int]),
    "tlearn_model_set_next_input": (c_int, [_M, c_char_p]),
    "tlearn_model_add_dense": (c_int, [_M, c_char_p, c_int]),
    "tlearn_model_add_flatten": (c_int, [_M, c_char_p]),
    "tlearn_model_add_activation": (c_int, [_M, c_char_p, c_int, c_float]),
    "tlearn_model_add_conv2d": (c_int, [_M, c_char_p, c_int, c_int, c_int, c_int, c_int]),
    "tlearn_model_add_conv2d_ex": (c_int, [_M, c_char_p] + [c_int] * 11),
    "tlearn_model_add_maxpool2d": (c_int, [_M, c_char_p, c_int, c_int, c_int]),
    "tlearn_model_add_avgpool2d": (c_int, [_M, c_char_p, c_int, c_int, c_int, c_int]),
    "tlearn_model_add_global_avgpool": (c_int, [_M, c_char_p]),
    "tlearn_model_add_batchnorm": (c_int, [_M, c_char_p, c_float, c_float]),
    "tlearn_model_add_dropout": (c_int, [_M, c_char_p, c_float]),
    "tlearn_model_add_add": (c_int, [_M, c_char_p, c_char_p]),
    # general graphs (1.1)
    "tlearn_model_create_input": (c_int, [_PM, c_char_p, c_int, c_int, P(c_int)]),
    "tlearn_model_add_input": (c_int, [_M, c_char_p, c_int, c_int, P(c_int)]),
    "tlearn_model_layer_shape_nd": (c_int, [_M, c_int, P(c_int), P(c_int), c_int]),
    "tlearn_model_add_linear": (c_int, [_M, c_char_p, c_int, c_int]),
    "tlearn_model_set_outputs": (c_int, [_M, P(c_char_p), c_int]),
    "tlearn_model_set_reducer": (c_int, [_M, REDUCE_FN, REDUCE_WAIT_FN, c_void_p, c_int,
                                         c_size_t, c_int]),
    "tlearn_model_output_count": (c_int, [_M, P(c_int)]),
    "tlearn_model_input_count": (c_int, [_M, P(c_int)]),
    "tlearn_model_input_info": (c_int, [_M, c_int, P(c_char_p), P(c_int)]),
    "tlearn_model_output_layer": (c_int, [_M, c_int, P(c_int)]),
    "tlearn_model_run": (c_int, [_M, P(c_void_p), c_int, c_size_t, P(f32p), P(c_size_t),
                                 c_int]),
    "tlearn_model_add_concat": (c_int, [_M, c_char_p, P(c_char_p), c_int, c_int]),
    "tlearn_model_add_slice": (c_int, [_M, c_char_p, c_int, c_int, c_int, c_int]),
    "tlearn_model_add_reshape": (c_int, [_M, c_char_p, c_int, P(c_int)]),
    "tlearn_model_add_transpose": (c_int, [_M, c_char_p, c_int, P(c_int)]),
    "tlearn_model_add_binary": (c_int, [_M, c_char_p, c_int, c_char_p, c_char_p]),
    "tlearn_model_add_scale": (c_int, [_M, c_char_p, c_int, P(c_int), c_int]),
    "tlearn_model_add_activation_ex": (c_int, [_M, c_char_p, c_int, P(c_float), c_int]),
    "tlearn_model_add_softmax": (c_int, [_M, c_char_p, c_int]),
    "tlearn_model_add_layernorm": (c_int, [_M, c_char_p, c_int, c_float, c_int]),
    "tlearn_model_add_layernorm_channels": (c_int, [_M, c_char_p, c_float, c_int]),
    "tlearn_model_add_maxpool2d_ex": (c_int, [_M, c_char_p] + [c_int] * 11),
    "tlearn_model_add_avgpool2d_ex": (c_int, [_M, c_char_p] + [c_int] * 10),
    "tlearn_model_add_adaptive_avgpool": (c_int, [_M, c_char_p, c_int, c_int]),
    "tlearn_model_add_pad": (c_int, [_M, c_char_p, c_int, c_int, c_int, c_int, c_int, c_float]),
    "tlearn_model_add_matmul": (c_int, [_M, c_char_p, c_char_p, c_char_p, c_int]),
    "tlearn_model_add_drop_path": (c_int, [_M, c_char_p, c_float]),
    # transformers (1.1)
    "tlearn_model_add_embedding": (c_int, [_M, c_char_p, c_int, c_int, c_int]),
    "tlearn_model_add_position_embedding": (c_int, [_M, c_char_p, c_int, c_int]),
    "tlearn_model_add_attention": (c_int, [_M, c_char_p, c_int, c_int, c_char_p]),
    "tlearn_model_add_token_pool": (c_int, [_M, c_char_p, c_int, c_char_p]),
    "tlearn_model_add_patch_embed": (c_int, [_M, c_char_p, c_int, c_int, c_int, c_int]),
    "tlearn_model_add_transformer_block": (c_int, [_M, c_char_p, c_int, c_int, c_int, c_int,
                                                   c_float, c_char_p]),
    "tlearn_model_train_step_inputs": (c_int, [_M, c_void_p, P(c_void_p), c_int, i32p,
                                               c_size_t, P(c_float)]),
    "tlearn_model_compute_gradients_inputs": (c_int, [_M, P(c_void_p), c_int, i32p, c_size_t,
                                                      P(c_float), f32p, c_size_t]),
    "tlearn_model_train_step_tokens": (c_int, [_M, c_void_p, P(c_void_p), c_int, i32p,
                                               ctypes.c_int32, c_size_t, P(c_float)]),
    "tlearn_model_compute_gradients_tokens": (c_int, [_M, P(c_void_p), c_int, i32p,
                                                      ctypes.c_int32, c_size_t, P(c_float)]),
    "tlearn_model_set_contrastive_temperature": (c_int, [_M, c_float]),
    "tlearn_model_train_step_pairs": (c_int, [_M, c_void_p, P(c_void_p), c_int, c_size_t,
                                              P(c_float)]),
    "tlearn_model_compute_gradients_pairs": (c_int, [_M, P(c_void_p), c_int, c_size_t,
                                                     P(c_float), f32p, c_size_t]),
    # few-shot without training, transferability (1.1)
    "tlearn_model_add_prototype": (c_int, [_M, c_char_p, c_int, c_float, c_int]),
    "tlearn_prototype_head": (c_int, [_M, c_char_p, c_char_p, f32p, i32p, c_size_t, c_int,
                                      c_float, c_uint]),
    "tlearn_prototype_update": (c_int, [_M, c_char_p, f32p, i32p, c_size_t, c_uint]),
    "tlearn_prototype_add_classes": (c_int, [_M, c_char_p, c_int]),
    "tlearn_prototype_remove_class": (c_int, [_M, c_char_p, c_int]),
    "tlearn_prototype_to_dense": (c_int, [_M, c_char_p]),
    "tlearn_model_embed": (c_int, [_M, c_char_p, f32p, c_size_t, f32p, c_size_t]),
    "tlearn_similarity_scores": (c_int, [f32p, c_size_t, f32p, c_size_t, c_int, c_int, f32p,
                                         c_size_t]),
    "tlearn_similarity_topk": (c_int, [f32p, c_size_t, f32p, c_size_t, c_int, c_int, c_int,
                                       i32p, f32p]),
    "tlearn_transferability": (c_int, [_M, c_char_p, f32p, i32p, c_size_t, c_int, c_int,
                                       P(c_double)]),
    "tlearn_transferability_features": (c_int, [f32p, c_size_t, c_int, i32p, c_int, c_int,
                                                P(c_double)]),
    # adapters
    "tlearn_lora_add": (c_int, [_M, c_char_p, c_char_p, c_int, c_float, c_float, c_uint]),
    "tlearn_lora_set_weight": (c_int, [_M, c_char_p, c_float]),
    "tlearn_lora_set_active": (c_int, [_M, c_char_p]),
    "tlearn_lora_merge": (c_int, [_M, c_char_p]),
    "tlearn_lora_unmerge": (c_int, [_M, c_char_p]),
    "tlearn_lora_remove": (c_int, [_M, c_char_p]),
    "tlearn_lora_save": (c_int, [_M, c_char_p, c_char_p]),
    "tlearn_lora_load": (c_int, [_M, c_char_p, c_char_p]),
    "tlearn_adapter_add_bottleneck": (c_int, [_M, c_char_p, c_char_p, c_int, c_int]),
    # domain adaptation (1.1)
    "tlearn_model_set_output_loss": (c_int, [_M, c_int, c_int, c_float]),
    "tlearn_model_set_discrepancy": (c_int, [_M, c_char_p, c_int, c_float]),
    "tlearn_model_set_mmd_bandwidths": (c_int, [_M, f32p, c_int]),
    "tlearn_discrepancy": (c_int, [c_int, f32p, c_size_t, c_size_t, P(ctypes.c_uint8), f32p,
                                   c_int, f32p, f32p]),
    "tlearn_model_train_step_multi": (c_int, [_M, c_void_p, P(c_void_p), c_int, c_size_t,
                                              P(c_void_p), c_int, P(ctypes.c_uint8), f32p]),
    "tlearn_model_add_grad_reverse": (c_int, [_M, c_char_p, c_float]),
    "tlearn_model_set_grad_reverse_lambda": (c_int, [_M, c_char_p, c_float]),
    "tlearn_dann_lambda": (c_float, [c_float]),
    "tlearn_model_adapt_bn": (c_int, [_M, P(c_void_p), c_int, c_size_t, c_size_t]),
    "tlearn_model_tent_step": (c_int, [_M, c_void_p, P(c_void_p), c_int, c_size_t, f32p]),
    "tlearn_model_tent_reset": (c_int, [_M]),
    # introspection
    "tlearn_model_layer_count": (c_int, [_M, P(c_int)]),
    "tlearn_model_layer_index": (c_int, [_M, c_char_p, P(c_int)]),
    "tlearn_model_layer_name": (c_int, [_M, c_int, P(c_char_p)]),
    "tlearn_model_layer_kind": (c_int, [_M, c_int, P(c_int)]),
    "tlearn_model_layer_shape": (c_int, [_M, c_int, P(c_int), P(c_int), P(c_int)]),
    "tlearn_model_layer_param_count": (c_int, [_M, c_int, P(c_size_t)]),
    "tlearn_model_param_count": (c_int, [_M, P(c_size_t), P(c_size_t)]),
    "tlearn_model_tensor_count": (c_int, [_M, P(c_int)]),
    "tlearn_model_tensor_info": (c_int, [_M, c_int, P(c_char_p), P(c_size_t), P(c_int),
                                         P(c_int)]),
    "tlearn_model_get_tensor": (c_int, [_M, c_char_p, f32p, c_size_t]),
    "tlearn_model_set_tensor": (c_int, [_M, c_char_p, f32p, c_size_t]),
    "tlearn_model_get_grad": (c_int, [_M, c_char_p, f32p, c_size_t]),
    "tlearn_model_workspace_bytes": (c_int, [_M, P(c_size_t)]),
    # inference and training
    "tlearn_model_predict": (c_int, [_M, f32p, c_size_t, f32p, c_size_t]),
    "tlearn_model_evaluate": (c_int, [_M, f32p, i32p, c_size_t, P(c_float), P(c_float)]),
    "tlearn_model_train_step": (c_int, [_M, c_void_p, f32p, i32p, c_size_t, P(c_float)]),
    "tlearn_model_train_step_mse": (c_int, [_M, c_void_p, f32p, f32p, c_size_t, P(c_float)]),
    "tlearn_model_compute_gradients": (c_int, [_M, f32p, i32p, c_size_t, P(c_float), f32p,
                                               c_size_t]),
    "tlearn_model_fit": (c_int, [_M, c_void_p, f32p, i32p, c_size_t, c_size_t, c_int, c_int,
                                 PROGRESS_FN, c_void_p]),
    # optimizers
    "tlearn_optim_create": (c_int, [_PM, c_int]),
    "tlearn_optim_destroy": (None, [_PM]),
    "tlearn_optim_set": (c_int, [c_void_p, c_int, c_double]),
    "tlearn_optim_get": (c_int, [c_void_p, c_int, P(c_double)]),
    "tlearn_optim_kind": (c_int, [c_void_p, P(c_int)]),
    # freeze policy, features, heads
    "tlearn_freeze_create": (c_int, [_PM]),
    "tlearn_freeze_destroy": (None, [_PM]),
    "tlearn_freeze_until": (c_int, [c_void_p, c_char_p]),
    "tlearn_freeze_match": (c_int, [c_void_p, c_char_p, c_int]),
    "tlearn_freeze_range": (c_int, [c_void_p, c_int, c_int, c_int]),
    "tlearn_freeze_lr_scale": (c_int, [c_void_p, c_char_p, c_float]),
    "tlearn_freeze_ulmfit": (c_int, [c_void_p, c_float]),
    "tlearn_freeze_bn_stats": (c_int, [c_void_p, c_int]),
    "tlearn_model_apply_freeze": (c_int, [_M, c_void_p]),
    "tlearn_model_layer_frozen": (c_int, [_M, c_char_p, P(c_int)]),
    "tlearn_freeze_tensors": (c_int, [c_void_p, c_char_p, c_int]),
    "tlearn_model_tensor_frozen": (c_int, [_M, c_char_p, P(c_int)]),
    "tlearn_model_create_shared": (c_int, [P(c_void_p), _M]),
    "tlearn_model_tensor_shared": (c_int, [_M, c_char_p, P(c_int)]),
    "tlearn_model_layer_lr_scale": (c_int, [_M, c_char_p, P(c_float)]),
    "tlearn_model_features": (c_int, [_M, c_char_p, f32p, c_size_t, f32p, c_size_t]),
    "tlearn_model_train_step_from": (c_int, [_M, c_void_p, c_char_p, f32p, i32p, c_size_t,
                                             P(c_float)]),
    "tlearn_model_predict_from": (c_int, [_M, c_char_p, f32p, c_size_t, f32p, c_size_t]),
    "tlearn_model_replace_head": (c_int, [_M, c_char_p, c_int]),
    "tlearn_model_truncate": (c_int, [_M, c_char_p]),
    # continual learning
    "tlearn_ewc_set_mode": (c_int, [_M, c_int, c_float]),
    "tlearn_ewc_consolidate": (c_int, [_M, f32p, i32p, c_size_t, c_int, c_float]),
    "tlearn_l2sp_enable": (c_int, [_M, c_float, c_float]),
    "tlearn_ewc_clear": (c_int, [_M]),
    "tlearn_model_penalty": (c_int, [_M, P(c_float)]),
    "tlearn_ewc_get_fisher": (c_int, [_M, c_int, c_char_p, f32p, c_size_t]),
    # checkpoints and interchange
    "tlearn_model_save": (c_int, [_M, c_void_p, c_char_p, c_uint]),
    "tlearn_model_load": (c_int, [_PM, _PM, c_char_p]),
    "tlearn_model_load_weights": (c_int, [_M, c_char_p, c_uint, P(c_size_t), P(c_size_t)]),
    "tlearn_model_set_metadata": (c_int, [_M, c_char_p, c_char_p]),
    "tlearn_model_get_metadata": (c_int, [_M, c_char_p, P(c_char_p)]),
    "tlearn_checkpoint_read_metadata": (c_int, [c_char_p, METADATA_FN, c_void_p]),
    "tlearn_model_import_safetensors": (c_int, [_M, c_char_p, NAME_MAP_FN, c_void_p, c_uint,
                                                P(c_size_t)]),
    "tlearn_model_export_safetensors": (c_int, [_M, c_char_p]),
    # the same in memory (1.1): buffers the library allocates are released by tlearn_free
    "tlearn_model_save_buffer": (c_int, [_M, c_void_p, c_uint, P(c_void_p), P(c_size_t)]),
    "tlearn_free": (None, [c_void_p]),
    "tlearn_model_load_buffer": (c_int, [_PM, _PM, c_void_p, c_size_t]),
    "tlearn_model_load_weights_buffer": (c_int, [_M, c_void_p, c_size_t, c_uint, P(c_size_t),
                                                 P(c_size_t)]),
    "tlearn_model_export_safetensors_buffer": (c_int, [_M, P(c_void_p), P(c_size_t)]),
    "tlearn_model_import_safetensors_buffer": (c_int, [_M, c_void_p, c_size_t, NAME_MAP_FN,
                                                       c_void_p, c_uint, P(c_size_t)]),
    "tlearn_model_import_onnx": (c_int, [_PM, c_char_p]),
    "tlearn_model_import_onnx_buffer": (c_int, [_PM, c_void_p, c_size_t]),
    "tlearn_model_export_onnx": (c_int, [_M, c_char_p, c_int]),
    "tlearn_model_export_onnx_buffer": (c_int, [_M, c_int, P(c_void_p), P(c_size_t)]),
    # training recipes (1.1): schedules, losses, metrics, fit with validation
    "tlearn_sched_create": (c_int, [_PM, c_int]),
    "tlearn_sched_destroy": (None, [_PM]),
    "tlearn_sched_set": (c_int, [c_void_p, c_int, c_double]),
    "tlearn_sched_get": (c_int, [c_void_p, c_int, P(c_double)]),
    "tlearn_sched_set_milestones": (c_int, [c_void_p, P(ctypes.c_int64), c_size_t]),
    "tlearn_optim_set_schedule": (c_int, [c_void_p, c_void_p]),
    "tlearn_optim_schedule_step": (c_int, [c_void_p]),
    "tlearn_optim_schedule_position": (c_int, [c_void_p, P(ctypes.c_int64)]),
    "tlearn_optim_get_current": (c_int, [c_void_p, c_int, P(c_double)]),
    "tlearn_model_set_class_weights": (c_int, [_M, f32p, c_size_t]),
    "tlearn_model_set_label_smoothing": (c_int, [_M, c_float]),
    "tlearn_model_evaluate_classes": (c_int, [_M, f32p, i32p, c_size_t, c_int, P(c_float),
                                              P(ctypes.c_int64), f32p, f32p, f32p, c_size_t]),
    "tlearn_model_evaluate_regression": (c_int, [_M, f32p, f32p, c_size_t, P(c_float),
                                                 P(c_float)]),
    "tlearn_fit_create": (c_int, [_PM]),
    "tlearn_fit_destroy": (None, [_PM]),
    "tlearn_fit_set": (c_int, [c_void_p, c_int, c_double]),
    "tlearn_fit_get": (c_int, [c_void_p, c_int, P(c_double)]),
    "tlearn_fit_set_validation": (c_int, [c_void_p, f32p, c_size_t, c_void_p, c_size_t,
                                          c_size_t]),
    "tlearn_fit_set_checkpoint": (c_int, [c_void_p, c_char_p]),
    "tlearn_fit_set_callbacks": (c_int, [c_void_p, PROGRESS_FN, EPOCH_FN, c_void_p]),
    "tlearn_model_fit_run": (c_int, [_M, c_void_p, c_void_p, f32p, c_void_p, c_size_t]),
    "tlearn_epoch_get": (c_int, [c_void_p, c_int, P(c_double)]),
    "tlearn_epoch_index": (c_int, [c_void_p, P(c_int), P(c_int)]),
}


def _declare(lib: ctypes.CDLL) -> None:
    missing = []
    for name, (restype, argtypes) in _SIGNATURES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.restype = restype
        fn.argtypes = argtypes
    if missing:
        raise OSError("libtlearn at %s lacks %s: it is older than these bindings"
                      % (lib._name, ", ".join(missing)))
