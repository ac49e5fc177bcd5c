/* The boot pass's floor (issue 14): a logic-free program that makes exactly the objects
 * `hermes-reconciler once` makes, with as few system calls as a plain C program needs and no
 * checks beyond what the calls return. It knows nothing of the rules: every profile listed gets
 * a slot, up when its gateway_state.json says "running".
 *
 * The bench compiles it at run time (`cc -O2`), with the slot templates captured from a real
 * `once` put in place of the TEMPLATES marker (TPL_NAMED, TPL_ROOT: { rel, mode, content } with @HOME@ and @NAME@ placeholders).
 *
 * Usage: floor HOME SCANDIR RUNTIME_DIR
 * Per profile: read gateway_state.json; unlink gateway.pid and processes.json; build the slot
 * under a dot name (dirs, files with their modes, down if stopped, supervise/ + control FIFO,
 * for the slot and its log/; event/ is s6-supervise's); rename it into the scan. Per pass: one listing
 * of profiles/, the rescan byte, the port record (fdatasync, renamed), status.json, the boot log. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct tpl { const char *rel; unsigned mode; const char *content; };

/* @TEMPLATES@ */

static void die(const char *what) { perror(what); exit(1); }

/* Appends `src` to `*buf` with @HOME@ and @NAME@ replaced. */
static size_t subst(char *out, const char *src, const char *home, const char *name) {
	size_t n = 0;
	while (*src) {
		if (!strncmp(src, "@HOME@", 6)) { size_t l = strlen(home); memcpy(out + n, home, l); n += l; src += 6; }
		else if (!strncmp(src, "@NAME@", 6)) { size_t l = strlen(name); memcpy(out + n, name, l); n += l; src += 6; }
		else out[n++] = *src++;
	}
	return n;
}

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static char *buf;

static void slot(int scan, const char *home, const char *name, const char *entry, int up, const struct tpl *t, size_t nt) {
	char st[512], p[1024];
	snprintf(st, sizeof st, ".%s.floor", entry);
	if (mkdirat(scan, st, 0755)) die("mkdir staging");
	snprintf(p, sizeof p, "%s/log", st); if (mkdirat(scan, p, 0755)) die("mkdir log");
	snprintf(p, sizeof p, "%s/data", st); if (mkdirat(scan, p, 0755)) die("mkdir data");
	for (size_t i = 0; i < nt; i++) {
		snprintf(p, sizeof p, "%s/%s", st, t[i].rel);
		int fd = openat(scan, p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, t[i].mode);
		if (fd < 0) die("create");
		size_t n = subst(buf, t[i].content, home, name);
		if (write(fd, buf, n) != (ssize_t)n) die("write");
		close(fd);
	}
	if (!up) {
		snprintf(p, sizeof p, "%s/down", st);
		int fd = openat(scan, p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
		if (fd < 0) die("down");
		close(fd);
	}
	const char *svc[2] = { "", "/log" };
	for (int i = 0; i < 2; i++) {
		snprintf(p, sizeof p, "%s%s/supervise", st, svc[i]); if (mkdirat(scan, p, 0710)) die("supervise");
		snprintf(p, sizeof p, "%s%s/supervise/control", st, svc[i]); if (mkfifoat(scan, p, 0660)) die("control");
	}
	if (syscall(SYS_renameat2, scan, st, scan, entry, 1 /* RENAME_NOREPLACE */)) die("rename");
}

static int running(int dir, const char *rel) {
	char b[4096];
	int fd = openat(dir, rel, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) return 0;
	ssize_t n = read(fd, b, sizeof b - 1);
	close(fd);
	if (n <= 0) return 0;
	b[n] = 0;
	return strstr(b, "\"running\"") != NULL;
}

int main(int argc, char **argv) {
	if (argc != 4) { fprintf(stderr, "usage: floor HOME SCANDIR RUNTIME_DIR\n"); return 2; }
	const char *home = argv[1];
	umask(0);
	buf = malloc(1 << 20);
	int h = open(home, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int scan = open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int pr = openat(h, "profiles", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (h < 0 || scan < 0 || pr < 0) die("open");
	size_t cap = 1024, n = 0;
	char **names = malloc(cap * sizeof *names);
	DIR *d = fdopendir(dup(pr));
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.') continue;
		if (n == cap) names = realloc(names, (cap *= 2) * sizeof *names);
		names[n++] = strdup(e->d_name);
	}
	closedir(d);
	qsort(names, n, sizeof *names, cmp);
	time_t now = time(NULL);
	char ts[64];
	strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S%z", localtime(&now));
	size_t logcap = (n + 1) * 128, loglen = 0, portcap = (n + 1) * 64 + 16, portlen = 0;
	char *log = malloc(logcap), *ports = malloc(portcap);
	portlen += sprintf(ports + portlen, "{\n");
	for (size_t i = 0; i <= n; i++) {
		const char *name = i == 0 ? "default" : names[i - 1];
		char p[512], entry[512];
		int up;
		if (i == 0) {
			up = running(h, "gateway_state.json");
			unlinkat(h, "gateway.pid", 0);
			unlinkat(h, "processes.json", 0);
		} else {
			snprintf(p, sizeof p, "%s/gateway_state.json", name); up = running(pr, p);
			snprintf(p, sizeof p, "%s/gateway.pid", name); unlinkat(pr, p, 0);
			snprintf(p, sizeof p, "%s/processes.json", name); unlinkat(pr, p, 0);
		}
		snprintf(entry, sizeof entry, "gateway-%s", name);
		if (i == 0) slot(scan, home, name, entry, up, TPL_ROOT, sizeof TPL_ROOT / sizeof *TPL_ROOT);
		else slot(scan, home, name, entry, up, TPL_NAMED, sizeof TPL_NAMED / sizeof *TPL_NAMED);
		loglen += snprintf(log + loglen, logcap - loglen, "%s profile=%s prior_state=%s action=%s prior_exit=none\n",
				   ts, name, up ? "running" : "stopped", up ? "start" : "skip");
		if (i > 0 && i <= 600)
			portlen += snprintf(ports + portlen, portcap - portlen, "%s  \"%s\": %zu", i > 1 ? ",\n" : "", name, 9200 + i - 1);
	}
	portlen += sprintf(ports + portlen, "\n}\n");
	/* the rescan byte */
	int c = openat(scan, ".s6-svscan/control", O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	if (c >= 0) { if (write(c, "a", 1) != 1) die("rescan"); close(c); }
	/* the port record: durable (fdatasync, as once), atomic */
	int pf = openat(h, ".gateway-ports.json.tmp", O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (pf < 0) die("ports");
	if (write(pf, ports, portlen) != (ssize_t)portlen) die("write ports");
	fdatasync(pf); /* as once: its data, durable before the rename */
	close(pf);
	if (renameat(h, ".gateway-ports.json.tmp", h, ".gateway-ports.json")) die("rename ports");
	/* status.json in the runtime directory */
	mkdir(argv[3], 0755);
	char sp[1024];
	snprintf(sp, sizeof sp, "%s/status.json", argv[3]);
	int sf = open(sp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (sf >= 0) { if (write(sf, "{}\n", 3) != 3) die("status"); close(sf); }
	/* the boot log: one append */
	mkdirat(h, "logs", 0755);
	int lf = openat(h, "logs/container-boot.log", O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (lf < 0) die("log");
	if (write(lf, log, loglen) != (ssize_t)loglen) die("write log");
	close(lf);
	return 0;
}
