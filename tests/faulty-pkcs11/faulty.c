/*
 * faulty.c: a fault-injecting PKCS#11 module for sigild's tests.
 *
 * It loads the real module named by SIGILD_FAULTY_TARGET (default: SoftHSM) with dlopen, takes
 * its function list and hands the application a copy in which every function is wrapped: each
 * call is counted, forwarded, and perturbed as the control file says. Only C_GetFunctionList is
 * exported (no C_GetInterface), so applications use the 2.40 list.
 *
 * Control file: SIGILD_FAULTY_CONTROL, re-read whenever its inode, size or mtime changes (write
 * a new file and rename it over the old one). One key=value per line, all optional, '#' starts a
 * comment:
 *   sign_error=CKR_NAME|0xHEX   fail the data-producing C_Sign with this code ...
 *   sign_error_every=N          ... every Nth data-producing C_Sign of a session (default 1:
 *                               every one)
 *   sign_error_percent=P        ... or at random, P % of them
 *   corrupt_every=N             flip a byte of every Nth signature of a session (C_Sign
 *                               answers CKR_OK)
 *   other_key_every=N           every Nth C_SignInit of a session signs with another private
 *                               key of the same CKA_KEY_TYPE (and CKA_EC_PARAMS) on the token
 * "Every Nth" counts per session, so that with several threads signing at once the pattern
 * stays what it says for each of them (a retry on a new session starts counting again); the
 * stats count over the whole process.
 *   drop_sessions=GEN           each new GEN invalidates every open session once; with
 *   keep_login=0|1              0: the real sessions are closed (the token logs out);
 *                               1: the old handles answer CKR_SESSION_HANDLE_INVALID while the
 *                                  real sessions stay open, so the login survives
 *   sign_delay_ms=N             sleep before every data-producing C_Sign
 *   generate_delay_ms=N         sleep before every C_GenerateKeyPair (a slow key generation)
 *   no_stats=1                  do not write the stats file (`sigild bench` at thousands of
 *                               signatures/s: the file is rewritten under the module's lock)
 *   hang=1                      the data-producing C_Sign blocks until the file says hang=0
 *   hang_count=N                data-producing C_Signs block while the stat `hung` is below N
 *                               (so N in the process's life, `hang` included), each until the
 *                               file no longer sets hang_count; later calls pass meanwhile:
 *                               one call stays stuck while the others are served
 *   token_absent=1              the token is pulled: slot lists with tokenPresent omit every
 *                               slot, token information and new sessions answer
 *                               CKR_TOKEN_NOT_PRESENT, session calls CKR_DEVICE_REMOVED; every
 *                               session is closed. Back to 0: like a re-inserted token (logged
 *                               out, the old session handles invalid).
 *   kill_at=C_Name:N            SIGKILL the process before the Nth call of C_Name
 *   kill_after=C_Name:N         SIGKILL the process after the Nth call of C_Name returned
 *
 * cryptoki's Session::sign calls C_SignInit, then C_Sign twice (NULL buffer for the length, then
 * the buffer): only the data-producing call (a non-NULL buffer) is counted and perturbed.
 *
 * Session handles are virtual (the module's own numbers, never reused), so a handle invalidated
 * here can never come to name another thread's new session on the real module.
 *
 * Stats: <control>.stats, rewritten (atomically) after each counted event, key=count lines:
 * sign_inits, sign_calls (data-producing), corrupted, other_key, sign_errors, delayed, hung,
 * sessions_dropped (drop generations applied), sessions_invalidated, token_removals,
 * absent_refusals, invalid_handle_calls (calls on an invalidated handle), control_reads,
 * logins (successful C_Login calls).
 *
 * Thread-safe: one mutex guards the state, never held across a call into the real module; a
 * read-write gate keeps session invalidation (which closes real sessions) from running while
 * another thread is inside the real module.
 *
 * Built by tests/support/faulty.rs:
 *   cc -shared -fPIC -O1 -Wall -Werror -I/usr/include/p11-kit-1 faulty.c -o libfaulty.so -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define DEFAULT_TARGET "/usr/lib/softhsm/libsofthsm2.so"

/* ---------------------------------------------------------------- state */

/* What the control file asks for. */
struct control {
	CK_RV sign_error;
	unsigned long sign_error_every;
	unsigned long sign_error_percent;
	unsigned long corrupt_every;
	unsigned long other_key_every;
	unsigned long drop_sessions;
	int keep_login;
	unsigned long sign_delay_ms;
	unsigned long generate_delay_ms;
	int hang;
	unsigned long hang_count;
	int token_absent;
	char kill_at[64];
	unsigned long kill_at_n;
	char kill_after[64];
	unsigned long kill_after_n;
	int no_stats;
};

enum session_state { LIVE, DEAD_OPEN, DEAD_CLOSED };

/* One session as the application knows it. */
struct session {
	CK_SESSION_HANDLE virt;
	CK_SESSION_HANDLE real;
	CK_SLOT_ID slot;
	enum session_state state;
	unsigned long sign_inits; /* C_SignInit calls on this session */
	unsigned long sign_calls; /* data-producing C_Sign calls on this session */
};

/* Counters written to the stats file. */
struct stats {
	unsigned long sign_inits;
	unsigned long sign_calls;
	unsigned long corrupted;
	unsigned long other_key;
	unsigned long sign_errors;
	unsigned long delayed;
	unsigned long generations_delayed;
	unsigned long hung;
	unsigned long sessions_dropped;
	unsigned long sessions_invalidated;
	unsigned long token_removals;
	unsigned long absent_refusals;
	unsigned long invalid_handle_calls;
	unsigned long control_reads;
	unsigned long logins;
};

/* Calls per function name, for kill_at / kill_after. */
struct call_count {
	const char *name;
	unsigned long n;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_rwlock_t gate;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void *target_lib;
static CK_FUNCTION_LIST *real;
static CK_FUNCTION_LIST ours;

static char control_path[4096];
static char stats_path[4200];
static struct stat control_seen;
static int control_seen_valid;
static struct control ctl;
static struct stats st;
static unsigned long applied_drop;
static int absent;

static struct session *sessions;
static size_t n_sessions, cap_sessions;
static CK_SESSION_HANDLE next_virt = 0x5100;

static struct call_count calls[80];
static size_t n_calls;
static unsigned int rand_state = 12345;

/* ---------------------------------------------------------------- helpers */

static const struct {
	const char *name;
	CK_RV rv;
} ckr_names[] = {
	{"CKR_CANCEL", CKR_CANCEL},
	{"CKR_HOST_MEMORY", CKR_HOST_MEMORY},
	{"CKR_GENERAL_ERROR", CKR_GENERAL_ERROR},
	{"CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED},
	{"CKR_ARGUMENTS_BAD", CKR_ARGUMENTS_BAD},
	{"CKR_DATA_INVALID", CKR_DATA_INVALID},
	{"CKR_DATA_LEN_RANGE", CKR_DATA_LEN_RANGE},
	{"CKR_DEVICE_ERROR", CKR_DEVICE_ERROR},
	{"CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY},
	{"CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED},
	{"CKR_FUNCTION_CANCELED", CKR_FUNCTION_CANCELED},
	{"CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID},
	{"CKR_KEY_FUNCTION_NOT_PERMITTED", CKR_KEY_FUNCTION_NOT_PERMITTED},
	{"CKR_MECHANISM_INVALID", CKR_MECHANISM_INVALID},
	{"CKR_OBJECT_HANDLE_INVALID", CKR_OBJECT_HANDLE_INVALID},
	{"CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE},
	{"CKR_OPERATION_NOT_INITIALIZED", CKR_OPERATION_NOT_INITIALIZED},
	{"CKR_PIN_EXPIRED", CKR_PIN_EXPIRED},
	{"CKR_SESSION_CLOSED", CKR_SESSION_CLOSED},
	{"CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
	{"CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT},
	{"CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN},
	{"CKR_BUFFER_TOO_SMALL", CKR_BUFFER_TOO_SMALL},
	{"CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED},
};

static CK_RV parse_rv(const char *v)
{
	size_t i;
	for (i = 0; i < sizeof ckr_names / sizeof ckr_names[0]; i++)
		if (strcmp(v, ckr_names[i].name) == 0)
			return ckr_names[i].rv;
	return strtoul(v, NULL, 0);
}

/* Write the stats file (tmp + rename). Caller holds `lock`. */
static void write_stats(void)
{
	char tmp[4300];
	FILE *f;
	if (!stats_path[0] || ctl.no_stats)
		return;
	snprintf(tmp, sizeof tmp, "%s.%d.tmp", stats_path, (int)getpid());
	f = fopen(tmp, "w");
	if (!f)
		return;
	fprintf(f,
		"sign_inits=%lu\nsign_calls=%lu\ncorrupted=%lu\nother_key=%lu\n"
		"sign_errors=%lu\ndelayed=%lu\nhung=%lu\nsessions_dropped=%lu\n"
		"sessions_invalidated=%lu\ntoken_removals=%lu\nabsent_refusals=%lu\n"
		"invalid_handle_calls=%lu\ncontrol_reads=%lu\nlogins=%lu\ngenerations_delayed=%lu\n",
		st.sign_inits, st.sign_calls, st.corrupted, st.other_key, st.sign_errors,
		st.delayed, st.hung, st.sessions_dropped, st.sessions_invalidated,
		st.token_removals, st.absent_refusals, st.invalid_handle_calls,
		st.control_reads, st.logins, st.generations_delayed);
	if (fclose(f) == 0)
		rename(tmp, stats_path);
	else
		unlink(tmp);
}

static void parse_kill(const char *v, char *name, size_t cap, unsigned long *n)
{
	const char *colon = strchr(v, ':');
	size_t len = colon ? (size_t)(colon - v) : strlen(v);
	if (len >= cap)
		len = cap - 1;
	memcpy(name, v, len);
	name[len] = 0;
	*n = colon ? strtoul(colon + 1, NULL, 10) : 1;
}

/* Re-read the control file when it changed. Caller holds `lock`. */
static void reload_locked(void)
{
	struct stat s;
	FILE *f;
	char line[512];
	struct control c;

	if (!control_path[0])
		return;
	if (stat(control_path, &s) != 0) {
		if (control_seen_valid) {
			memset(&ctl, 0, sizeof ctl);
			control_seen_valid = 0;
		}
		return;
	}
	if (control_seen_valid && s.st_ino == control_seen.st_ino &&
	    s.st_size == control_seen.st_size &&
	    s.st_mtim.tv_sec == control_seen.st_mtim.tv_sec &&
	    s.st_mtim.tv_nsec == control_seen.st_mtim.tv_nsec)
		return;
	f = fopen(control_path, "r");
	if (!f)
		return;
	memset(&c, 0, sizeof c);
	c.sign_error_every = 1;
	while (fgets(line, sizeof line, f)) {
		char *eq, *key = line, *val, *end;
		while (*key == ' ' || *key == '\t')
			key++;
		if (*key == '#' || !(eq = strchr(key, '=')))
			continue;
		*eq = 0;
		val = eq + 1;
		for (end = eq; end > key && (end[-1] == ' ' || end[-1] == '\t'); end--)
			end[-1] = 0;
		while (*val == ' ' || *val == '\t')
			val++;
		for (end = val + strlen(val);
		     end > val && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' ');
		     end--)
			end[-1] = 0;
		if (!strcmp(key, "sign_error"))
			c.sign_error = parse_rv(val);
		else if (!strcmp(key, "sign_error_every"))
			c.sign_error_every = strtoul(val, NULL, 10);
		else if (!strcmp(key, "sign_error_percent"))
			c.sign_error_percent = strtoul(val, NULL, 10);
		else if (!strcmp(key, "corrupt_every"))
			c.corrupt_every = strtoul(val, NULL, 10);
		else if (!strcmp(key, "other_key_every"))
			c.other_key_every = strtoul(val, NULL, 10);
		else if (!strcmp(key, "drop_sessions"))
			c.drop_sessions = strtoul(val, NULL, 10);
		else if (!strcmp(key, "keep_login"))
			c.keep_login = atoi(val);
		else if (!strcmp(key, "sign_delay_ms"))
			c.sign_delay_ms = strtoul(val, NULL, 10);
		else if (!strcmp(key, "no_stats"))
			c.no_stats = atoi(val);
		else if (!strcmp(key, "generate_delay_ms"))
			c.generate_delay_ms = strtoul(val, NULL, 10);
		else if (!strcmp(key, "hang"))
			c.hang = atoi(val);
		else if (!strcmp(key, "hang_count"))
			c.hang_count = strtoul(val, NULL, 10);
		else if (!strcmp(key, "token_absent"))
			c.token_absent = atoi(val);
		else if (!strcmp(key, "kill_at"))
			parse_kill(val, c.kill_at, sizeof c.kill_at, &c.kill_at_n);
		else if (!strcmp(key, "kill_after"))
			parse_kill(val, c.kill_after, sizeof c.kill_after, &c.kill_after_n);
	}
	fclose(f);
	ctl = c;
	control_seen = s;
	control_seen_valid = 1;
	st.control_reads++;
	write_stats();
}

static struct session *find_session(CK_SESSION_HANDLE virt)
{
	size_t i;
	for (i = 0; i < n_sessions; i++)
		if (sessions[i].virt == virt)
			return &sessions[i];
	return NULL;
}

static void remove_session(struct session *s)
{
	*s = sessions[--n_sessions];
}

static int add_session(CK_SESSION_HANDLE real_h, CK_SLOT_ID slot, CK_SESSION_HANDLE *virt)
{
	if (n_sessions == cap_sessions) {
		size_t cap = cap_sessions ? cap_sessions * 2 : 16;
		struct session *p = realloc(sessions, cap * sizeof *p);
		if (!p)
			return 0;
		sessions = p;
		cap_sessions = cap;
	}
	sessions[n_sessions].virt = *virt = next_virt++;
	sessions[n_sessions].real = real_h;
	sessions[n_sessions].slot = slot;
	sessions[n_sessions].state = LIVE;
	sessions[n_sessions].sign_inits = 0;
	sessions[n_sessions].sign_calls = 0;
	n_sessions++;
	return 1;
}

/* Close every real session (they all become DEAD_CLOSED) on every slot that has one. Caller
 * holds the gate for writing and `lock`. */
static void close_all_real_locked(void)
{
	CK_SLOT_ID slots[64];
	size_t n = 0, i, j;
	for (i = 0; i < n_sessions; i++) {
		if (sessions[i].state == LIVE)
			st.sessions_invalidated++;
		if (sessions[i].state == DEAD_CLOSED)
			continue;
		sessions[i].state = DEAD_CLOSED;
		for (j = 0; j < n && slots[j] != sessions[i].slot; j++)
			;
		if (j == n && n < 64)
			slots[n++] = sessions[i].slot;
	}
	for (i = 0; i < n; i++)
		real->C_CloseAllSessions(slots[i]);
}

/* Apply what a new control file asks for once (drop_sessions, token_absent). Takes the gate
 * for writing when there is something to do. Caller holds nothing. */
static void apply_transitions(void)
{
	int drop, keep, pull, unplug;
	size_t i;

	pthread_mutex_lock(&lock);
	drop = ctl.drop_sessions != applied_drop;
	keep = ctl.keep_login;
	pull = ctl.token_absent && !absent;
	unplug = !ctl.token_absent && absent;
	pthread_mutex_unlock(&lock);
	if (!drop && !pull && !unplug)
		return;

	pthread_rwlock_wrlock(&gate);
	pthread_mutex_lock(&lock);
	if (ctl.drop_sessions != applied_drop) {
		applied_drop = ctl.drop_sessions;
		st.sessions_dropped++;
		if (keep) {
			for (i = 0; i < n_sessions; i++)
				if (sessions[i].state == LIVE) {
					sessions[i].state = DEAD_OPEN;
					st.sessions_invalidated++;
				}
		} else {
			close_all_real_locked();
		}
	}
	if (ctl.token_absent && !absent) {
		absent = 1;
		st.token_removals++;
		close_all_real_locked();
	} else if (!ctl.token_absent && absent) {
		absent = 0;
	}
	write_stats();
	pthread_mutex_unlock(&lock);
	pthread_rwlock_unlock(&gate);
}

/* Count a call of `name` and die here when kill_at says so; returns the call's number. */
static unsigned long enter(const char *name)
{
	unsigned long n;
	size_t i;
	int die;

	pthread_mutex_lock(&lock);
	reload_locked();
	for (i = 0; i < n_calls && strcmp(calls[i].name, name); i++)
		;
	if (i == n_calls && n_calls < sizeof calls / sizeof calls[0]) {
		calls[n_calls].name = name;
		calls[n_calls].n = 0;
		n_calls++;
	}
	n = i < n_calls ? ++calls[i].n : 0;
	die = ctl.kill_at[0] && !strcmp(ctl.kill_at, name) && ctl.kill_at_n == n;
	pthread_mutex_unlock(&lock);
	if (die)
		raise(SIGKILL);
	apply_transitions();
	return n;
}

/* After the `n`th call of `name` returned: die here when kill_after says so. */
static void leave(const char *name, unsigned long n)
{
	int die;
	pthread_mutex_lock(&lock);
	die = ctl.kill_after[0] && !strcmp(ctl.kill_after, name) && ctl.kill_after_n == n;
	pthread_mutex_unlock(&lock);
	if (die)
		raise(SIGKILL);
}

/* Resolve a virtual session handle to the real one and take the gate for reading; on failure
 * the gate is not held and the error is returned. */
static CK_RV resolve(CK_SESSION_HANDLE virt, CK_SESSION_HANDLE *real_h)
{
	struct session *s;
	CK_RV rv = CKR_OK;

	pthread_rwlock_rdlock(&gate);
	pthread_mutex_lock(&lock);
	s = find_session(virt);
	if (absent) {
		rv = CKR_DEVICE_REMOVED;
		st.absent_refusals++;
		write_stats();
	} else if (!s || s->state != LIVE) {
		rv = CKR_SESSION_HANDLE_INVALID;
		if (s) {
			st.invalid_handle_calls++;
			write_stats();
		}
	} else {
		*real_h = s->real;
	}
	pthread_mutex_unlock(&lock);
	if (rv != CKR_OK)
		pthread_rwlock_unlock(&gate);
	return rv;
}

static void sleep_ms(unsigned long ms)
{
	struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int token_absent_now(void)
{
	int a;
	pthread_mutex_lock(&lock);
	a = absent;
	if (a) {
		st.absent_refusals++;
		write_stats();
	}
	pthread_mutex_unlock(&lock);
	return a;
}

/* ---------------------------------------------------------------- wrappers */

/* A function that takes a session first: counted, resolved, forwarded under the gate. `args`
 * names the real handle `rh`. */
#define SESSION_FN(name, params, args)                                                    \
	static CK_RV w_##name params                                                      \
	{                                                                                 \
		CK_SESSION_HANDLE rh = 0;                                                 \
		unsigned long n = enter(#name);                                           \
		CK_RV rv = resolve(hSession, &rh);                                        \
		if (rv == CKR_OK) {                                                       \
			rv = real->name args;                                             \
			pthread_rwlock_unlock(&gate);                                     \
		}                                                                         \
		leave(#name, n);                                                          \
		return rv;                                                                \
	}

/* A function without a session: counted and forwarded. */
#define PLAIN_FN(name, params, args)                                                      \
	static CK_RV w_##name params                                                      \
	{                                                                                 \
		unsigned long n = enter(#name);                                           \
		CK_RV rv;                                                                 \
		pthread_rwlock_rdlock(&gate);                                             \
		rv = real->name args;                                                     \
		pthread_rwlock_unlock(&gate);                                             \
		leave(#name, n);                                                          \
		return rv;                                                                \
	}

/* A slot function that a pulled token refuses with CKR_TOKEN_NOT_PRESENT. */
#define TOKEN_FN(name, params, args)                                                      \
	static CK_RV w_##name params                                                      \
	{                                                                                 \
		unsigned long n = enter(#name);                                           \
		CK_RV rv;                                                                 \
		if (token_absent_now()) {                                                 \
			rv = CKR_TOKEN_NOT_PRESENT;                                       \
		} else {                                                                  \
			pthread_rwlock_rdlock(&gate);                                     \
			rv = real->name args;                                             \
			pthread_rwlock_unlock(&gate);                                     \
		}                                                                         \
		leave(#name, n);                                                          \
		return rv;                                                                \
	}

static void load_target(void)
{
	const char *t = getenv("SIGILD_FAULTY_TARGET");
	const char *c = getenv("SIGILD_FAULTY_CONTROL");
	CK_C_GetFunctionList get;
	pthread_rwlockattr_t attr;

	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&gate, &attr);
	pthread_rwlockattr_destroy(&attr);

	if (c && *c) {
		snprintf(control_path, sizeof control_path, "%s", c);
		snprintf(stats_path, sizeof stats_path, "%s.stats", c);
	}
	target_lib = dlopen(t && *t ? t : DEFAULT_TARGET, RTLD_NOW | RTLD_LOCAL);
	if (!target_lib) {
		fprintf(stderr, "faulty-pkcs11: cannot load %s: %s\n",
			t && *t ? t : DEFAULT_TARGET, dlerror());
		return;
	}
	get = (CK_C_GetFunctionList)dlsym(target_lib, "C_GetFunctionList");
	if (!get || get(&real) != CKR_OK || !real) {
		fprintf(stderr, "faulty-pkcs11: no function list in the target module\n");
		real = NULL;
	}
}

static CK_RV w_C_Initialize(void *args)
{
	unsigned long n = enter("C_Initialize");
	CK_RV rv = real->C_Initialize(args);
	leave("C_Initialize", n);
	return rv;
}

static CK_RV w_C_Finalize(void *reserved)
{
	unsigned long n = enter("C_Finalize");
	CK_RV rv;
	pthread_rwlock_wrlock(&gate);
	rv = real->C_Finalize(reserved);
	pthread_mutex_lock(&lock);
	n_sessions = 0;
	pthread_mutex_unlock(&lock);
	pthread_rwlock_unlock(&gate);
	leave("C_Finalize", n);
	return rv;
}

PLAIN_FN(C_GetInfo, (CK_INFO_PTR info), (info))
PLAIN_FN(C_WaitForSlotEvent, (CK_FLAGS flags, CK_SLOT_ID_PTR slot, void *reserved),
	 (flags, slot, reserved))

static CK_RV w_C_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
	unsigned long n = enter("C_GetSlotList");
	CK_RV rv;
	if (present && token_absent_now()) {
		/* Every token is pulled: no slot has one. */
		if (!count)
			rv = CKR_ARGUMENTS_BAD;
		else {
			*count = 0;
			rv = CKR_OK;
		}
	} else {
		pthread_rwlock_rdlock(&gate);
		rv = real->C_GetSlotList(present, list, count);
		pthread_rwlock_unlock(&gate);
	}
	leave("C_GetSlotList", n);
	return rv;
}

static CK_RV w_C_GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info)
{
	unsigned long n = enter("C_GetSlotInfo");
	CK_RV rv;
	int a;
	pthread_rwlock_rdlock(&gate);
	rv = real->C_GetSlotInfo(slot, info);
	pthread_rwlock_unlock(&gate);
	pthread_mutex_lock(&lock);
	a = absent;
	pthread_mutex_unlock(&lock);
	if (rv == CKR_OK && a && info)
		info->flags &= ~CKF_TOKEN_PRESENT;
	leave("C_GetSlotInfo", n);
	return rv;
}

TOKEN_FN(C_GetTokenInfo, (CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info), (slot, info))
TOKEN_FN(C_GetMechanismList, (CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count),
	 (slot, list, count))
TOKEN_FN(C_GetMechanismInfo, (CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info),
	 (slot, type, info))
TOKEN_FN(C_InitToken,
	 (CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len, CK_UTF8CHAR_PTR label),
	 (slot, pin, pin_len, label))

static CK_RV w_C_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, void *app, CK_NOTIFY notify,
			     CK_SESSION_HANDLE_PTR out)
{
	unsigned long n = enter("C_OpenSession");
	CK_SESSION_HANDLE rh = 0, zombies[64];
	size_t nz = 0, i;
	CK_RV rv;

	if (token_absent_now()) {
		leave("C_OpenSession", n);
		return CKR_TOKEN_NOT_PRESENT;
	}
	if (!out) {
		leave("C_OpenSession", n);
		return CKR_ARGUMENTS_BAD;
	}
	pthread_rwlock_rdlock(&gate);
	rv = real->C_OpenSession(slot, flags, app, notify, &rh);
	if (rv == CKR_OK) {
		pthread_mutex_lock(&lock);
		if (!add_session(rh, slot, out)) {
			pthread_mutex_unlock(&lock);
			real->C_CloseSession(rh);
			pthread_rwlock_unlock(&gate);
			leave("C_OpenSession", n);
			return CKR_HOST_MEMORY;
		}
		/* Sessions kept open only to keep the login: a live one now holds it. */
		for (i = 0; i < n_sessions;) {
			if (sessions[i].state == DEAD_OPEN && sessions[i].slot == slot && nz < 64 &&
			    sessions[i].real != rh) {
				sessions[i].state = DEAD_CLOSED;
				zombies[nz++] = sessions[i].real;
			}
			i++;
		}
		pthread_mutex_unlock(&lock);
		for (i = 0; i < nz; i++)
			real->C_CloseSession(zombies[i]);
	}
	pthread_rwlock_unlock(&gate);
	leave("C_OpenSession", n);
	return rv;
}

static CK_RV w_C_CloseSession(CK_SESSION_HANDLE hSession)
{
	unsigned long n = enter("C_CloseSession");
	struct session *s;
	CK_SESSION_HANDLE rh = 0;
	CK_RV rv = CKR_OK;
	int close_real = 0;
	size_t i;

	pthread_rwlock_rdlock(&gate);
	pthread_mutex_lock(&lock);
	s = find_session(hSession);
	if (!s) {
		rv = CKR_SESSION_HANDLE_INVALID;
	} else if (s->state == LIVE) {
		rh = s->real;
		close_real = 1;
		remove_session(s);
		if (absent)
			rv = CKR_DEVICE_REMOVED;
	} else if (s->state == DEAD_OPEN) {
		/* Close the real one only when a live session keeps the login. */
		for (i = 0; i < n_sessions; i++)
			if (sessions[i].state == LIVE && sessions[i].slot == s->slot)
				break;
		if (i < n_sessions) {
			rh = s->real;
			close_real = 1;
			remove_session(s);
		}
		rv = CKR_SESSION_HANDLE_INVALID;
	} else {
		remove_session(s);
		rv = absent ? CKR_DEVICE_REMOVED : CKR_SESSION_HANDLE_INVALID;
	}
	pthread_mutex_unlock(&lock);
	if (close_real) {
		CK_RV r = real->C_CloseSession(rh);
		if (rv == CKR_OK)
			rv = r;
	}
	pthread_rwlock_unlock(&gate);
	leave("C_CloseSession", n);
	return rv;
}

static CK_RV w_C_CloseAllSessions(CK_SLOT_ID slot)
{
	unsigned long n = enter("C_CloseAllSessions");
	size_t i;
	CK_RV rv;
	pthread_rwlock_wrlock(&gate);
	rv = real->C_CloseAllSessions(slot);
	pthread_mutex_lock(&lock);
	for (i = 0; i < n_sessions;) {
		if (sessions[i].slot == slot)
			remove_session(&sessions[i]);
		else
			i++;
	}
	pthread_mutex_unlock(&lock);
	pthread_rwlock_unlock(&gate);
	leave("C_CloseAllSessions", n);
	return rv;
}

SESSION_FN(C_InitPIN, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pin, CK_ULONG len),
	   (rh, pin, len))
SESSION_FN(C_SetPIN,
	   (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR old, CK_ULONG old_len, CK_UTF8CHAR_PTR new,
	    CK_ULONG new_len),
	   (rh, old, old_len, new, new_len))
SESSION_FN(C_GetSessionInfo, (CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR info), (rh, info))
SESSION_FN(C_GetOperationState, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR state, CK_ULONG_PTR len),
	   (rh, state, len))
SESSION_FN(C_SetOperationState,
	   (CK_SESSION_HANDLE hSession, CK_BYTE_PTR state, CK_ULONG len, CK_OBJECT_HANDLE ek,
	    CK_OBJECT_HANDLE ak),
	   (rh, state, len, ek, ak))

/* C_Login, counted when it succeeds (a test tells a kept login from a new one). */
static CK_RV w_C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin,
		       CK_ULONG len)
{
	CK_SESSION_HANDLE rh = 0;
	unsigned long n = enter("C_Login");
	CK_RV rv = resolve(hSession, &rh);
	if (rv == CKR_OK) {
		rv = real->C_Login(rh, user, pin, len);
		pthread_rwlock_unlock(&gate);
		if (rv == CKR_OK) {
			pthread_mutex_lock(&lock);
			st.logins++;
			write_stats();
			pthread_mutex_unlock(&lock);
		}
	}
	leave("C_Login", n);
	return rv;
}
SESSION_FN(C_Logout, (CK_SESSION_HANDLE hSession), (rh))
SESSION_FN(C_CreateObject,
	   (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR t, CK_ULONG n_t, CK_OBJECT_HANDLE_PTR o),
	   (rh, t, n_t, o))
SESSION_FN(C_CopyObject,
	   (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n_t,
	    CK_OBJECT_HANDLE_PTR no),
	   (rh, o, t, n_t, no))
SESSION_FN(C_DestroyObject, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE o), (rh, o))
SESSION_FN(C_GetObjectSize, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE o, CK_ULONG_PTR size),
	   (rh, o, size))
SESSION_FN(C_GetAttributeValue,
	   (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n_t),
	   (rh, o, t, n_t))
SESSION_FN(C_SetAttributeValue,
	   (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n_t),
	   (rh, o, t, n_t))
SESSION_FN(C_FindObjectsInit, (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR t, CK_ULONG n_t),
	   (rh, t, n_t))
SESSION_FN(C_FindObjects,
	   (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR o, CK_ULONG max, CK_ULONG_PTR count),
	   (rh, o, max, count))
SESSION_FN(C_FindObjectsFinal, (CK_SESSION_HANDLE hSession), (rh))
SESSION_FN(C_EncryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k),
	   (rh, m, k))
SESSION_FN(C_Encrypt,
	   (CK_SESSION_HANDLE hSession, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR e, CK_ULONG_PTR el),
	   (rh, d, dl, e, el))
SESSION_FN(C_EncryptUpdate,
	   (CK_SESSION_HANDLE hSession, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR e, CK_ULONG_PTR el),
	   (rh, d, dl, e, el))
SESSION_FN(C_EncryptFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR e, CK_ULONG_PTR el),
	   (rh, e, el))
SESSION_FN(C_DecryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k),
	   (rh, m, k))
SESSION_FN(C_Decrypt,
	   (CK_SESSION_HANDLE hSession, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR e, CK_ULONG_PTR el),
	   (rh, d, dl, e, el))
SESSION_FN(C_DecryptUpdate,
	   (CK_SESSION_HANDLE hSession, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR e, CK_ULONG_PTR el),
	   (rh, d, dl, e, el))
SESSION_FN(C_DecryptFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR e, CK_ULONG_PTR el),
	   (rh, e, el))
SESSION_FN(C_DigestInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR m), (rh, m))
SESSION_FN(C_Digest,
	   (CK_SESSION_HANDLE hSession, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR e, CK_ULONG_PTR el),
	   (rh, d, dl, e, el))
SESSION_FN(C_DigestUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR d, CK_ULONG dl), (rh, d, dl))
SESSION_FN(C_DigestKey, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE k), (rh, k))
SESSION_FN(C_DigestFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR e, CK_ULONG_PTR el),
	   (rh, e, el))
SESSION_FN(C_SignUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR d, CK_ULONG dl), (rh, d, dl))
SESSION_FN(C_SignFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR e, CK_ULONG_PTR el),
	   (rh, e, el))
SESSION_FN(C_SignRecoverInit,
	   (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (rh, m, k))
SESSION_FN(C_SignRecover,
	   (CK_SESSION_HANDLE hSession, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR e, CK_ULONG_PTR el),
	   (rh, d, dl, e, el))
SESSION_FN(C_VerifyInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k),
	   (rh, m, k))
SESSION_FN(C_Verify,
	   (CK_SESSION_HANDLE hSession, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR s, CK_ULONG sl),
	   (rh, d, dl, s, sl))
SESSION_FN(C_VerifyUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR d, CK_ULONG dl), (rh, d, dl))
SESSION_FN(C_VerifyFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR s, CK_ULONG sl), (rh, s, sl))
SESSION_FN(C_VerifyRecoverInit,
	   (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (rh, m, k))
SESSION_FN(C_VerifyRecover,
	   (CK_SESSION_HANDLE hSession, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR e, CK_ULONG_PTR el),
	   (rh, d, dl, e, el))
SESSION_FN(C_DigestEncryptUpdate,
	   (CK_SESSION_HANDLE hSession, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR e, CK_ULONG_PTR el),
	   (rh, d, dl, e, el))
SESSION_FN(C_DecryptDigestUpdate,
	   (CK_SESSION_HANDLE hSession, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR e, CK_ULONG_PTR el),
	   (rh, d, dl, e, el))
SESSION_FN(C_SignEncryptUpdate,
	   (CK_SESSION_HANDLE hSession, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR e, CK_ULONG_PTR el),
	   (rh, d, dl, e, el))
SESSION_FN(C_DecryptVerifyUpdate,
	   (CK_SESSION_HANDLE hSession, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR e, CK_ULONG_PTR el),
	   (rh, d, dl, e, el))
SESSION_FN(C_GenerateKey,
	   (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n_t,
	    CK_OBJECT_HANDLE_PTR k),
	   (rh, m, t, n_t, k))
/* Key generation, slowed down by generate_delay_ms (outside the gate and the lock). */
static CK_RV w_C_GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR m,
				 CK_ATTRIBUTE_PTR pt, CK_ULONG n_pt, CK_ATTRIBUTE_PTR kt,
				 CK_ULONG n_kt, CK_OBJECT_HANDLE_PTR pub, CK_OBJECT_HANDLE_PTR priv)
{
	CK_SESSION_HANDLE rh = 0;
	unsigned long n = enter("C_GenerateKeyPair");
	unsigned long delay;
	CK_RV rv;

	pthread_mutex_lock(&lock);
	delay = ctl.generate_delay_ms;
	if (delay) {
		st.generations_delayed++;
		write_stats();
	}
	pthread_mutex_unlock(&lock);
	if (delay)
		sleep_ms(delay);
	rv = resolve(hSession, &rh);
	if (rv == CKR_OK) {
		rv = real->C_GenerateKeyPair(rh, m, pt, n_pt, kt, n_kt, pub, priv);
		pthread_rwlock_unlock(&gate);
	}
	leave("C_GenerateKeyPair", n);
	return rv;
}
SESSION_FN(C_WrapKey,
	   (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wk, CK_OBJECT_HANDLE k,
	    CK_BYTE_PTR w, CK_ULONG_PTR wl),
	   (rh, m, wk, k, w, wl))
SESSION_FN(C_UnwrapKey,
	   (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE uk, CK_BYTE_PTR w,
	    CK_ULONG wl, CK_ATTRIBUTE_PTR t, CK_ULONG n_t, CK_OBJECT_HANDLE_PTR k),
	   (rh, m, uk, w, wl, t, n_t, k))
SESSION_FN(C_DeriveKey,
	   (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE bk, CK_ATTRIBUTE_PTR t,
	    CK_ULONG n_t, CK_OBJECT_HANDLE_PTR k),
	   (rh, m, bk, t, n_t, k))
SESSION_FN(C_SeedRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR s, CK_ULONG sl), (rh, s, sl))
SESSION_FN(C_GenerateRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR r, CK_ULONG rl),
	   (rh, r, rl))
SESSION_FN(C_GetFunctionStatus, (CK_SESSION_HANDLE hSession), (rh))
SESSION_FN(C_CancelFunction, (CK_SESSION_HANDLE hSession), (rh))

/* Another private key on session `rh` of the same CKA_KEY_TYPE (and CKA_EC_PARAMS) as `key`, or
 * `key` itself when there is none. Called with the gate held for reading. */
static CK_OBJECT_HANDLE other_key(CK_SESSION_HANDLE rh, CK_OBJECT_HANDLE key)
{
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_KEY_TYPE type = 0;
	unsigned char params[256], other_params[256];
	CK_ATTRIBUTE want[2] = {{CKA_KEY_TYPE, &type, sizeof type},
				{CKA_EC_PARAMS, params, sizeof params}};
	CK_ATTRIBUTE find[2] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &type, sizeof type}};
	CK_OBJECT_HANDLE found[64], pick = key;
	CK_ULONG n = 0, i, params_len;

	if (real->C_GetAttributeValue(rh, key, want, 1) != CKR_OK)
		return key;
	want[1].ulValueLen = sizeof params;
	if (real->C_GetAttributeValue(rh, key, &want[1], 1) != CKR_OK)
		want[1].ulValueLen = 0;
	params_len = want[1].ulValueLen == CK_UNAVAILABLE_INFORMATION ? 0 : want[1].ulValueLen;
	if (real->C_FindObjectsInit(rh, find, 2) != CKR_OK)
		return key;
	if (real->C_FindObjects(rh, found, 64, &n) != CKR_OK)
		n = 0;
	real->C_FindObjectsFinal(rh);
	for (i = 0; i < n && pick == key; i++) {
		CK_ATTRIBUTE p = {CKA_EC_PARAMS, other_params, sizeof other_params};
		CK_ULONG len;
		if (found[i] == key)
			continue;
		if (real->C_GetAttributeValue(rh, found[i], &p, 1) != CKR_OK)
			p.ulValueLen = 0;
		len = p.ulValueLen == CK_UNAVAILABLE_INFORMATION ? 0 : p.ulValueLen;
		if (len == params_len && memcmp(params, other_params, len) == 0)
			pick = found[i];
	}
	return pick;
}

static CK_RV w_C_SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE key)
{
	unsigned long n = enter("C_SignInit");
	CK_SESSION_HANDLE rh = 0;
	CK_OBJECT_HANDLE use = key;
	unsigned long every, count = 0;
	struct session *s;
	CK_RV rv = resolve(hSession, &rh);

	if (rv == CKR_OK) {
		pthread_mutex_lock(&lock);
		st.sign_inits++;
		if ((s = find_session(hSession)))
			count = ++s->sign_inits;
		every = ctl.other_key_every;
		pthread_mutex_unlock(&lock);
		if (every && count && count % every == 0) {
			use = other_key(rh, key);
			if (use != key) {
				pthread_mutex_lock(&lock);
				st.other_key++;
				write_stats();
				pthread_mutex_unlock(&lock);
			}
		}
		rv = real->C_SignInit(rh, m, use);
		pthread_rwlock_unlock(&gate);
	}
	leave("C_SignInit", n);
	return rv;
}

static CK_RV w_C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR data, CK_ULONG data_len,
		      CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
	unsigned long n = enter("C_Sign");
	CK_SESSION_HANDLE rh = 0;
	struct control c;
	struct session *s;
	unsigned long count = 0;
	int fail = 0, corrupt = 0, counted_hang = 0;
	CK_RV rv;

	if (sig) {
		/* The data-producing call: count it and decide its fate. */
		pthread_mutex_lock(&lock);
		c = ctl;
		st.sign_calls++;
		if ((s = find_session(hSession)) && s->state == LIVE)
			count = ++s->sign_calls;
		if (c.sign_error && c.sign_error_percent)
			fail = (unsigned long)(rand_r(&rand_state) % 100) < c.sign_error_percent;
		else if (c.sign_error && c.sign_error_every && count)
			fail = count % c.sign_error_every == 0;
		corrupt = c.corrupt_every && count && count % c.corrupt_every == 0;
		if (c.sign_delay_ms)
			st.delayed++;
		if (c.hang)
			st.hung++;
		else if (c.hang_count && st.hung < c.hang_count) {
			st.hung++;
			counted_hang = 1;
		}
		write_stats();
		pthread_mutex_unlock(&lock);
		if (c.sign_delay_ms)
			sleep_ms(c.sign_delay_ms);
		while (c.hang) {
			sleep_ms(20);
			pthread_mutex_lock(&lock);
			reload_locked();
			c.hang = ctl.hang;
			pthread_mutex_unlock(&lock);
		}
		while (counted_hang) {
			sleep_ms(20);
			pthread_mutex_lock(&lock);
			reload_locked();
			counted_hang = ctl.hang_count != 0;
			pthread_mutex_unlock(&lock);
		}
	}
	rv = resolve(hSession, &rh);
	if (rv == CKR_OK) {
		rv = real->C_Sign(rh, data, data_len, sig, sig_len);
		pthread_rwlock_unlock(&gate);
	}
	if (sig && rv == CKR_OK && (fail || corrupt)) {
		pthread_mutex_lock(&lock);
		if (fail) {
			/* The real operation ran to its end, so the session is clean. */
			rv = c.sign_error;
			st.sign_errors++;
		} else if (*sig_len > 0) {
			sig[*sig_len / 2] ^= 0x5a;
			st.corrupted++;
		}
		write_stats();
		pthread_mutex_unlock(&lock);
	}
	leave("C_Sign", n);
	return rv;
}

/* ---------------------------------------------------------------- entry point */

static void build_list(void)
{
	load_target();
	if (!real)
		return;
	ours = *real;
	ours.C_GetFunctionList = C_GetFunctionList;
#define SET(name) ours.name = w_##name
	SET(C_Initialize);
	SET(C_Finalize);
	SET(C_GetInfo);
	SET(C_GetSlotList);
	SET(C_GetSlotInfo);
	SET(C_GetTokenInfo);
	SET(C_GetMechanismList);
	SET(C_GetMechanismInfo);
	SET(C_InitToken);
	SET(C_InitPIN);
	SET(C_SetPIN);
	SET(C_OpenSession);
	SET(C_CloseSession);
	SET(C_CloseAllSessions);
	SET(C_GetSessionInfo);
	SET(C_GetOperationState);
	SET(C_SetOperationState);
	SET(C_Login);
	SET(C_Logout);
	SET(C_CreateObject);
	SET(C_CopyObject);
	SET(C_DestroyObject);
	SET(C_GetObjectSize);
	SET(C_GetAttributeValue);
	SET(C_SetAttributeValue);
	SET(C_FindObjectsInit);
	SET(C_FindObjects);
	SET(C_FindObjectsFinal);
	SET(C_EncryptInit);
	SET(C_Encrypt);
	SET(C_EncryptUpdate);
	SET(C_EncryptFinal);
	SET(C_DecryptInit);
	SET(C_Decrypt);
	SET(C_DecryptUpdate);
	SET(C_DecryptFinal);
	SET(C_DigestInit);
	SET(C_Digest);
	SET(C_DigestUpdate);
	SET(C_DigestKey);
	SET(C_DigestFinal);
	SET(C_SignInit);
	SET(C_Sign);
	SET(C_SignUpdate);
	SET(C_SignFinal);
	SET(C_SignRecoverInit);
	SET(C_SignRecover);
	SET(C_VerifyInit);
	SET(C_Verify);
	SET(C_VerifyUpdate);
	SET(C_VerifyFinal);
	SET(C_VerifyRecoverInit);
	SET(C_VerifyRecover);
	SET(C_DigestEncryptUpdate);
	SET(C_DecryptDigestUpdate);
	SET(C_SignEncryptUpdate);
	SET(C_DecryptVerifyUpdate);
	SET(C_GenerateKey);
	SET(C_GenerateKeyPair);
	SET(C_WrapKey);
	SET(C_UnwrapKey);
	SET(C_DeriveKey);
	SET(C_SeedRandom);
	SET(C_GenerateRandom);
	SET(C_GetFunctionStatus);
	SET(C_CancelFunction);
	SET(C_WaitForSlotEvent);
#undef SET
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
	pthread_once(&once, build_list);
	if (!list)
		return CKR_ARGUMENTS_BAD;
	if (!real)
		return CKR_GENERAL_ERROR;
	*list = &ours;
	return CKR_OK;
}
