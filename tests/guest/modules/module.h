/*
 * The parts of FreeBSD's <sys/module.h> and <sys/linker_set.h> a module
 * needs to carry loader-visible metadata, written to produce the same
 * object shape with a stock gcc:
 *
 *  - struct mod_metadata {int md_version; int md_type; const void *md_data;
 *    const char *md_cval;} instances (MDT_STRUCT_VERSION = 1);
 *  - a pointer to each in section "set_modmetadata_set" (DATA_SET), whose
 *    values are filled by R_X86_64_64 relocations in .relaset_modmetadata_set;
 *  - __start_set_modmetadata_set/__stop_ are not defined in a .ko: the
 *    loader and the kernel linker find the set by section name.
 */
#ifndef TEST_MODULE_H
#define TEST_MODULE_H

#define NULL ((void *)0)
#define __used __attribute__((__used__))
#define __section(x) __attribute__((__section__(x)))

#define MDT_DEPEND 1
#define MDT_MODULE 2
#define MDT_VERSION 3
#define MDT_STRUCT_VERSION 1

typedef struct module *module_t;
typedef int (*modeventhand_t)(module_t, int, void *);
enum { MOD_LOAD, MOD_UNLOAD, MOD_SHUTDOWN, MOD_QUIESCE };

typedef struct moduledata {
	const char *name;
	modeventhand_t evhand;
	void *priv;
} moduledata_t;

struct mod_depend {
	int md_ver_minimum;
	int md_ver_preferred;
	int md_ver_maximum;
};

struct mod_version {
	int mv_version;
};

struct mod_metadata {
	int md_version;
	int md_type;
	const void *md_data;
	const char *md_cval;
};

/* linker_set.h __MAKE_SET */
#define DATA_SET(set, sym) \
	static void const *const __set_##set##_sym_##sym __section("set_" #set) __used = &(sym)

#define MODULE_METADATA(uniquifier, type, data, cval)                        \
	static struct mod_metadata _mod_metadata##uniquifier = {             \
	    MDT_STRUCT_VERSION, type, data, cval};                           \
	DATA_SET(modmetadata_set, _mod_metadata##uniquifier)

#define MODULE_DEPEND(module, mdepend, vmin, vpref, vmax)                   \
	static struct mod_depend _##module##_depend_on_##mdepend             \
	    __section(".data") = {vmin, vpref, vmax};                        \
	MODULE_METADATA(_md_##module##_on_##mdepend, MDT_DEPEND,             \
	    &_##module##_depend_on_##mdepend, #mdepend)

#define MODULE_VERSION(module, version)                                      \
	static struct mod_version _##module##_version __section(".data") = { \
	    version};                                                        \
	MODULE_METADATA(_##module##_version, MDT_VERSION,                    \
	    &_##module##_version, #module)

/* DECLARE_MODULE without its SYSINIT and without the implicit dependency
 * on "kernel" (this test kernel declares no modules of its own). */
#define DECLARE_TEST_MODULE(name, data) \
	MODULE_METADATA(_md_##name, MDT_MODULE, &data, #name)

#endif
