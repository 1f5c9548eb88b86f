/*
 * testdep.ko: MDT_MODULE "testdep" and MDT_VERSION testdep 2; the
 * dependency of testmod.ko.
 */
#include "module.h"

int testdep_value(void) { return 42; }

static int testdep_modevent(module_t mod, int what, void *arg)
{
	(void)mod;
	(void)what;
	(void)arg;
	return 0;
}

static moduledata_t testdep_mod = {"testdep", testdep_modevent, NULL};

DECLARE_TEST_MODULE(testdep, testdep_mod);

/*
 * FreeBSD's toolchain types .eh_frame as SHT_X86_64_UNWIND, which the
 * loader places like PROGBITS (load_elf_obj.c); gcc on Linux emits
 * PROGBITS.  This module is built without unwind tables and carries an
 * empty .eh_frame (a zero terminator) of the FreeBSD type instead.
 */
__asm__(".section .eh_frame,\"a\",@unwind\n"
	".balign 8\n"
	".long 0\n"
	".previous\n");
MODULE_VERSION(testdep, 2);
