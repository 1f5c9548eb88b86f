/*
 * testmod.ko: MDT_MODULE "testmod", MDT_VERSION testmod 3 and
 * MDT_DEPEND on testdep (min 1, preferred 2, max 3), so a FreeBSD loader
 * must load testdep.ko right after it (boot ABI §7.3).
 * The guest kernel (module_checks.c) expects exactly these entries.
 */
#include "module.h"

extern int testdep_value(void);	/* undefined here: resolved by the kernel linker */

static int loads;		/* .bss */
static volatile char scratch[256];	/* .bss: must read as zero after loading */

static int testmod_modevent(module_t mod, int what, void *arg)
{
	(void)mod;
	(void)arg;
	if (what == MOD_LOAD) {
		loads++;
		scratch[loads & 255] = 1;
	}
	return testdep_value() == 42 ? 0 : 1;
}

static moduledata_t testmod_mod = {"testmod", testmod_modevent, NULL};

DECLARE_TEST_MODULE(testmod, testmod_mod);
MODULE_DEPEND(testmod, testdep, 1, 2, 3);
MODULE_VERSION(testmod, 3);
