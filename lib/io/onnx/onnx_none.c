/* Built without protobuf-c (meson option 'onnx' disabled or not found): ONNX import is
 * refused with a message that says so, and so is export. */
#include "../../core/core.h"

int tlearn_model_import_onnx(tlearn_model **out, const char *path)
{
    (void)path;
    if (out)
        *out = NULL;
    return tl_fail(TLEARN_EUNSUPPORTED, "tlearn_model_import_onnx: this libtlearn was built "
                   "without ONNX support (rebuild with protobuf-c and -Donnx=enabled)");
}

int tlearn_model_import_onnx_buffer(tlearn_model **out, const void *data, size_t len)
{
    (void)data;
    (void)len;
    if (out)
        *out = NULL;
    return tl_fail(TLEARN_EUNSUPPORTED, "tlearn_model_import_onnx_buffer: this libtlearn was "
                   "built without ONNX support (rebuild with protobuf-c and -Donnx=enabled)");
}

int tlearn_model_export_onnx(const tlearn_model *m, const char *path, int opset)
{
    (void)m;
    (void)path;
    (void)opset;
    return tl_fail(TLEARN_EUNSUPPORTED, "tlearn_model_export_onnx: this libtlearn was built "
                   "without ONNX support (rebuild with protobuf-c and -Donnx=enabled)");
}

int tlearn_model_export_onnx_buffer(const tlearn_model *m, int opset, void **data, size_t *size)
{
    (void)m;
    (void)opset;
    if (data)
        *data = NULL;
    if (size)
        *size = 0;
    return tl_fail(TLEARN_EUNSUPPORTED, "tlearn_model_export_onnx_buffer: this libtlearn was "
                   "built without ONNX support (rebuild with protobuf-c and -Donnx=enabled)");
}
