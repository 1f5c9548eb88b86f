/*
 * The kernel environment (§5.1-§5.3) and the boot flags (§5.4, §5.5).
 *
 * Expectations come from variables the test puts into the environment
 * itself (with bhyveload -e or loader.conf):
 *   test.expect_env=a,b=c,...   a must exist; b must equal c
 *   test.expect_noenv=a,b       these must not exist
 *   test.howto=<number>         exact MODINFOMD_HOWTO value
 */
#include "guest.h"

#define RB_ASKNAME 0x1
#define RB_SINGLE 0x2
#define RB_DFLTROOT 0x20
#define RB_KDB 0x40
#define RB_VERBOSE 0x800
#define RB_SERIAL 0x1000
#define RB_CDROM 0x2000
#define RB_GDB 0x8000
#define RB_MUTE 0x10000
#define RB_PAUSE 0x100000
#define RB_MULTIPLE 0x20000000

static const struct md_file *kf;

/* Is `name` mentioned (as "name" or "name=...") in test.expect_env? */
static int expect_mentions(const char *name)
{
	const char *list = kenv_get("test.expect_env");
	char item[128];
	u64 nl = strlen(name);
	if (!list)
		return 0;
	for (u32 i = 0; list_item(list, ',', i, item, sizeof(item)); i++)
		if (memcmp(item, name, nl) == 0 && (item[nl] == 0 || item[nl] == '='))
			return 1;
	return 0;
}

static void check_block(void)
{
	u64 envp = md_u64(md_find(kf, MD(MODINFOMD_ENVP)));

	check_begin("env: ENVP record present, page-aligned, below modulep");
	check_result(envp && !(envp & (PAGE_SIZE - 1)) && envp < md.modulep,
	    "envp 0x%lx modulep 0x%lx", envp, md.modulep);

	check_begin("env: block double-NUL terminated before modulep");
	check_result(kenv.terminated, "no empty string within 0x%lx bytes", kenv.len);

	check_begin("env: every entry is name=value");
	u32 i;
	for (i = 0; i < kenv_count(); i++) {
		const char *e = kenv_entry(i), *q = e;
		while (*q && *q != '=')
			q++;
		if (q == e || !*q)
			break;		/* empty name or no '=' */
	}
	if (i < kenv_count())
		check_fail("entry %u: %s", i, kenv_entry(i));
	else
		check_pass();

	/* env_setenv() keeps the list sorted and unique (§5.1). */
	check_begin("env: names unique and in strcmp order");
	for (i = 1; i < kenv_count(); i++) {
		const char *a = kenv_entry(i - 1), *b = kenv_entry(i);
		/* compare names only: '=' ends a name */
		while (*a && *a != '=' && *a == *b)
			a++, b++;
		int ca = *a == '=' ? 0 : (u8)*a, cb = *b == '=' ? 0 : (u8)*b;
		if (ca >= cb)
			break;
	}
	if (i < kenv_count())
		check_fail("%s before %s", kenv_entry(i - 1), kenv_entry(i));
	else
		check_pass();
}

static void check_builtin(const char *name, const char *value)
{
	check_begin("env: %s=%s (bhyveload built-in)", name, value);
	if (expect_mentions(name)) {
		check_skip("overridden by test.expect_env");
		return;
	}
	const char *v = kenv_get(name);
	check_result(v && strcmp(v, value) == 0, "%s", v ? v : "(absent)");
}

static void check_expected(void)
{
	const char *list = kenv_get("test.expect_env");
	char item[128];
	for (u32 i = 0; list && list_item(list, ',', i, item, sizeof(item)); i++) {
		char *eq = item;
		while (*eq && *eq != '=')
			eq++;
		check_begin("env: test.expect_env %s", item);
		if (*eq) {
			*eq = 0;
			const char *v = kenv_get(item);
			check_result(v && strcmp(v, eq + 1) == 0, "%s", v ? v : "(absent)");
		} else {
			check_result(kenv_get(item) != NULL, "absent");
		}
	}
	list = kenv_get("test.expect_noenv");
	for (u32 i = 0; list && list_item(list, ',', i, item, sizeof(item)); i++) {
		check_begin("env: test.expect_noenv %s", item);
		const char *v = kenv_get(item);
		check_result(!v, "present: %s", v);
	}
}

/* userboot bi_getboothowto(): kernel args, then boot_* variables (value
 * not "no"), then the console list (§5.5). */
static u32 expected_howto(void)
{
	static const struct {
		const char *ev;
		u32 mask;
	} names[] = {
		{"boot_askname", RB_ASKNAME}, {"boot_cdrom", RB_CDROM},
		{"boot_ddb", RB_KDB}, {"boot_dfltroot", RB_DFLTROOT},
		{"boot_gdb", RB_GDB}, {"boot_multicons", RB_MULTIPLE},
		{"boot_mute", RB_MUTE}, {"boot_pause", RB_PAUSE},
		{"boot_serial", RB_SERIAL}, {"boot_single", RB_SINGLE},
		{"boot_verbose", RB_VERBOSE},
	};
	u32 howto = 0;
	const struct md_rec *args = md_find(kf, MODINFO_ARGS);
	if (args) {
		int active = 0;
		for (const char *cp = (const char *)args->data; *cp; cp++) {
			if (!active && *cp == '-') {
				active = 1;
				continue;
			}
			if (!active)
				continue;
			switch (*cp) {
			case 'a': howto |= RB_ASKNAME; break;
			case 'C': howto |= RB_CDROM; break;
			case 'd': howto |= RB_KDB; break;
			case 'D': howto |= RB_MULTIPLE; break;
			case 'm': howto |= RB_MUTE; break;
			case 'g': howto |= RB_GDB; break;
			case 'h': howto |= RB_SERIAL; break;
			case 'p': howto |= RB_PAUSE; break;
			case 'r': howto |= RB_DFLTROOT; break;
			case 's': howto |= RB_SINGLE; break;
			case 'v': howto |= RB_VERBOSE; break;
			default: active = 0; break;
			}
		}
	}
	for (u32 i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		const char *v = kenv_get(names[i].ev);
		if (v && strcasecmp(v, "no") != 0)
			howto |= names[i].mask;
	}
	const char *console = kenv_get("console");
	if (console) {
		char word[64];
		int vid = 0;
		u64 n = 0;
		for (const char *p = console;; p++) {
			if (*p && *p != ' ' && *p != ',') {
				if (n + 1 < sizeof(word))
					word[n++] = *p;
				continue;
			}
			word[n] = 0;
			if (strcmp(word, "vidconsole") == 0)
				vid = 1;
			else if (strcmp(word, "comconsole") == 0)
				howto |= RB_SERIAL;
			else if (strcmp(word, "nullconsole") == 0)
				howto |= RB_MUTE;
			n = 0;
			if (!*p)
				break;
		}
		if (vid && (howto & RB_SERIAL))
			howto |= RB_MULTIPLE;
		if (strcmp(console, "vidconsole") == 0)
			howto &= ~RB_SERIAL;
	}
	return howto;
}

static void check_howto(void)
{
	const struct md_rec *r = md_find(kf, MD(MODINFOMD_HOWTO));
	u32 howto = r && r->size == 4 ? *(const u32 *)r->data : 0;
	u32 want = expected_howto();
	u64 t = 0;

	check_begin("howto: HOWTO = flags from kernel ARGS, boot_* variables and console");
	if (!r)
		check_fail("HOWTO record missing");
	else
		check_result(howto == want, "HOWTO 0x%x, computed 0x%x", howto, want);

	check_begin("howto: RB_SERIAL set (boot_serial=1)");
	if (expect_mentions("boot_serial"))
		check_skip("boot_serial overridden by test.expect_env");
	else
		check_result(howto & RB_SERIAL, "HOWTO 0x%x", howto);

	check_begin("howto: HOWTO = test.howto");
	int have = kenv_get_num("test.howto", &t);
	if (have == 0)
		check_skip("test.howto not set");
	else
		check_result(have == 1 && r && howto == t, "HOWTO 0x%x, want 0x%lx", howto, t);
}

void env_checks(void)
{
	if (no_loader) {
		check_begin("env: kernel environment and howto");
		check_skip("no loader hand-off (multiboot entry)");
		return;
	}
	if (!md.ok || !md.nfiles)
		return;
	kf = &md.files[0];
	check_block();
	check_builtin("smbios.bios.vendor", "BHYVE");
	check_builtin("boot_serial", "1");
	check_expected();
	check_howto();
}
