/*
 * tokenstate.h: the fencing-token epoch, persisted so that tokens strictly increase per key
 * across restarts of pgwarden (SPEC section 2, "also across restarts of pgwarden").
 *
 * Why an epoch.  lockmgr hands out tokens from one counter per run, every token greater
 * than config.token_floor and at most config.token_ceiling (lockmgr.h).  Each run of
 * pgwarden claims a new epoch E and uses the token range (E << 40, ((E + 1) << 40) - 1], so
 * every token of a run is greater than every token of every earlier run, and a grant never
 * waits for a disk write: the only write is the claim, once, before pgwarden serves.  A run
 * that uses up its 2^40 tokens gets LOCKMGR_TOKENS_EXHAUSTED from lockmgr (restart to claim
 * the next epoch).  Epochs stop at PX_TOKENSTATE_EPOCH_MAX = 2^23 - 1, the last one whose
 * tokens still fit a signed bigint (the SQL type of a token).
 *
 * The file.  One line of text, e.g.
 *     pgwarden token state v1 epoch=42 crc32c=9b6af835
 * holding the last epoch claimed (0 in a file created but never claimed), with a CRC-32C of
 * everything before " crc32c=".  The content must be exactly the line pgwarden would write
 * for that epoch: anything else (a flipped bit, a truncated write, an edit, another file)
 * is "corrupt".
 *
 * What it guarantees.  px_tokenstate_claim() returns epoch E only after a file saying E is
 * durable: written to "<path>.tmp", fsync'ed, renamed over path, and the directory
 * fsync'ed.  A crash at any point leaves either the old file or the new one, never a
 * mixture, so the next claim returns an epoch greater than every epoch returned before.  A
 * missing file is an error unless the caller asks to create it (create_missing: the first
 * start of a new installation); a corrupt or unreadable file is always an error, so pgwarden
 * refuses to start rather than risk handing out a token twice.  Claims are serialized with
 * flock() on the state file, so pgwarden processes starting at the same time with the same
 * file still get distinct epochs.
 *
 * What it is not.  It cannot detect a file restored from an old backup or deleted and
 * recreated: keep the file on durable storage that is not reset between runs (a container's
 * volume, not its image).  path names the file itself: a symbolic link there is replaced by
 * a regular file at the first claim.
 *
 * Blocking file I/O: call it at start-up, before the event loop serves.  Tests:
 * tests/proxy/test_tokenstate.c.
 */
#ifndef PGW_PROXY_TOKENSTATE_H
#define PGW_PROXY_TOKENSTATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PX_TOKENSTATE_EPOCH_SHIFT 40 /* tokens per epoch: 2^40 */
#define PX_TOKENSTATE_EPOCH_MAX   ((UINT64_C(1) << 23) - 1)
#define PX_TOKENSTATE_LINE_MAX    80 /* the longest line pgwarden writes, with its '\n' */

/* What a run may use: pass token_floor and token_ceiling to lockmgr_config. */
struct px_tokenstate {
    uint64_t epoch;         /* 1..PX_TOKENSTATE_EPOCH_MAX, now durable in the file */
    uint64_t token_floor;   /* epoch << 40: every token is greater */
    uint64_t token_ceiling; /* ((epoch + 1) << 40) - 1: no token is greater */
};

/*
 * Claims the next epoch from the state file at path (borrowed): reads the last epoch E,
 * makes E + 1 durable (see above) and fills *out for E + 1.  A missing file is created
 * first, holding epoch 0, when create_missing is true, and is an error otherwise.  Returns
 * 0, or -1 with *errmsg (allocated, free with free(); naming the file and the reason) and
 * the file unchanged.  Blocking; not for the event loop.
 */
__attribute__((warn_unused_result)) int px_tokenstate_claim(const char *path, bool create_missing,
                                                            struct px_tokenstate *out,
                                                            char **errmsg);

/* The range of epoch (1..PX_TOKENSTATE_EPOCH_MAX) as px_tokenstate_claim fills it. */
void px_tokenstate_range(uint64_t epoch, struct px_tokenstate *out);

/* Writes the file's line for epoch (<= PX_TOKENSTATE_EPOCH_MAX), '\n' included, to buf
 * (at least PX_TOKENSTATE_LINE_MAX bytes; NUL-terminated).  Returns its length. */
size_t px_tokenstate_format(uint64_t epoch, char *buf);

/* Parses a file's content buf[0..len) (any bytes).  0 and *epoch, or -1 and *why (a static
 * string: what is wrong with it). */
int px_tokenstate_parse(const char *buf, size_t len, uint64_t *epoch, const char **why);

/* CRC-32C (Castagnoli), as iSCSI and ext4 use it: px_crc32c(0, "123456789", 9) is
 * 0xe3069283.  Pass the previous result as crc to continue a running checksum. */
uint32_t px_crc32c(uint32_t crc, const void *data, size_t len);

#endif
