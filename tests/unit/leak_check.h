/*
 * The leak check every unit test runs under (cmocka setup/teardown): the
 * counted allocator's live count must come back to where it was, with
 * allocation-failure injection switched off again. Include after cmocka.h.
 */
#ifndef BRIX_TESTS_LEAK_CHECK_H
#define BRIX_TESTS_LEAK_CHECK_H

#include "core/alloc.h"

static int64_t g_live_at_start;

static int leak_setup(void **state)
{
    (void)state;
    g_live_at_start = brix_alloc_live();
    return 0;
}

static int leak_teardown(void **state)
{
    (void)state;
    brix_alloc_fail_after(-1);
    assert_int_equal(brix_alloc_live(), g_live_at_start);
    return 0;
}

#endif
