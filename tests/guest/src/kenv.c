/*
 * Kernel environment lookup (§5.1): the loader's ENVP block
 * "name=value\0...\0\0" or, on the multiboot path, the command line split
 * at blanks.  Entry starts are indexed once so lookups stay cheap (every
 * loop iteration costs ~1.6 us here).
 */
#include "guest.h"

#define KENV_MAX 512
struct kenv_block kenv;
static const char *entries[KENV_MAX];
static char cmdline_env[1024];

/* Index a block of at most len bytes; records whether the double NUL was
 * found inside the bound. */
static void kenv_index(const char *p, u64 len)
{
	u64 i = 0;
	kenv.base = p;
	kenv.nentries = 0;
	kenv.terminated = 0;
	while (i < len) {
		if (p[i] == 0) {	/* empty string = end of block */
			kenv.terminated = 1;
			kenv.len = i + 1;
			return;
		}
		u64 start = i;
		while (i < len && p[i])
			i++;
		if (i == len)
			break;		/* entry runs past the bound */
		if (kenv.nentries < KENV_MAX)
			entries[kenv.nentries++] = p + start;
		i++;
	}
	kenv.len = len;
}

void kenv_from_loader(u64 envp, u64 limit)
{
	const char *p;
	if (envp == 0 || limit <= envp)
		return;
	if (limit - envp > (1UL << 20))
		limit = envp + (1UL << 20);
	p = phys_ptr(envp, limit - envp);
	if (p)
		kenv_index(p, limit - envp);
}

void kenv_from_cmdline(const char *cmdline)
{
	u64 n = 0;
	if (!cmdline)
		return;
	/* blanks become NULs; then index the non-empty words */
	while (n < sizeof(cmdline_env) - 2 && cmdline[n]) {
		char c = cmdline[n];
		cmdline_env[n++] = (c == ' ' || c == '\t') ? 0 : c;
	}
	cmdline_env[n] = 0;
	kenv.base = cmdline_env;
	kenv.len = n + 1;
	kenv.terminated = 1;
	kenv.nentries = 0;
	for (u64 i = 0; i < n && kenv.nentries < KENV_MAX; i++)
		if (cmdline_env[i] && (i == 0 || !cmdline_env[i - 1]))
			entries[kenv.nentries++] = cmdline_env + i;
}

u32 kenv_count(void) { return kenv.nentries; }
const char *kenv_entry(u32 i) { return i < kenv.nentries ? entries[i] : NULL; }

const char *kenv_get(const char *name)
{
	u64 nl = strlen(name);
	for (u32 i = 0; i < kenv.nentries; i++) {
		const char *e = entries[i];
		if (memcmp(e, name, nl) == 0 && e[nl] == '=')
			return e + nl + 1;
	}
	return NULL;
}

int kenv_get_num(const char *name, u64 *out)
{
	const char *v = kenv_get(name);
	if (!v)
		return 0;
	return parse_u64(v, 0, out) ? 1 : -1;
}
