/* A build without ONNX support refuses both import entry points with EUNSUPPORTED and a
 * message that says why, leaving *out NULL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "tlearn/tlearn.h"

static void test_refused(void **state)
{
    (void)state;
    static const unsigned char byte = 0x08;
    tlearn_model *m = (tlearn_model *)(uintptr_t)1;
    assert_int_equal(tlearn_model_import_onnx(&m, "model.onnx"), TLEARN_EUNSUPPORTED);
    assert_null(m);
    assert_non_null(strstr(tlearn_errmsg(), "without ONNX support"));
    m = (tlearn_model *)(uintptr_t)1;
    assert_int_equal(tlearn_model_import_onnx_buffer(&m, &byte, 1), TLEARN_EUNSUPPORTED);
    assert_null(m);
    assert_non_null(strstr(tlearn_errmsg(), "without ONNX support"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_refused)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
