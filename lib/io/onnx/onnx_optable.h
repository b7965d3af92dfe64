/* The ONNX operator table seen without protobuf types: tests/onnx checks doc/onnx.md
 * against it (test_onnx_optable.c). */
#ifndef TL_ONNX_OPTABLE_H
#define TL_ONNX_OPTABLE_H

#include <stddef.h>

/* Line @p i of the operator table (an op type may have several lines for different
 * opsets): 1 and its fields, or 0 past the end. */
int ox_op_info(size_t i, const char **op_type, int *min_opset, int *max_opset,
               const char **limits);

/* Line @p i of the exporter's table (onnx_export.c): 1 with the layer kind's name and the
 * ONNX operators it becomes, or 0 past the end. */
int ox_export_info(size_t i, const char **kind_name, const char **ops);

#endif
