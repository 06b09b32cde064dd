/* check_run.h: the main() tail every check suite shares. */
#ifndef TAME_TEST_CHECK_RUN_H
#define TAME_TEST_CHECK_RUN_H

#include <check.h>

/* Run the suite (fork mode follows CK_FORK) and map failures to the exit code. */
static inline int check_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

#endif
