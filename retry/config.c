/*
 * config.c: defaults and validation of the [retry] and [breaker] sections.
 *
 * Interface: retry_config_defaults, retry_config_check (retry/retry.h),
 * breaker_config_defaults, breaker_config_check (retry/breaker.h).  Why each default is
 * what it is: retry/README.md, "Configuration".
 */
#include "retry/retry.h"
#include "retry_int.h"

void retry_config_defaults(struct retry_config *cfg)
{
    retry_sqlstates_defaults(&cfg->retryable_sqlstates);
    cfg->max_attempts = 5;
    cfg->base_ms = 5;
    cfg->cap_ms = 1000;
    cfg->multiplier = 2.0;
    cfg->jitter = BACKOFF_JITTER_FULL;
    cfg->budget_pct = 10;
    cfg->budget_window_ms = 10000;
    cfg->budget_min_retries = 10;
    cfg->retry_buffer_bytes = 1024 * 1024;
    cfg->retry_checkpoint_bytes = 8192;
}

enum retry_status retry_config_check(const struct retry_config *cfg, const char **why)
{
    const char *bad = NULL;

    if (cfg->max_attempts < 1 || cfg->max_attempts > 100)
        bad = "max_attempts: must be 1..100";
    else if (cfg->base_ms < 1 || cfg->base_ms > 3600000)
        bad = "base_ms: must be 1..3600000";
    else if (cfg->cap_ms < cfg->base_ms || cfg->cap_ms > 3600000)
        bad = "cap_ms: must be base_ms..3600000";
    else if (!(cfg->multiplier >= 1.0 && cfg->multiplier <= 100.0))
        bad = "multiplier: must be 1..100";
    else if ((unsigned)cfg->jitter > BACKOFF_JITTER_NONE)
        bad = "jitter: must be full, equal, decorrelated or none";
    else if (cfg->budget_pct > 100)
        bad = "budget_pct: must be 0..100";
    else if (cfg->budget_window_ms < 100 || cfg->budget_window_ms > 3600000)
        bad = "budget_window_ms: must be 100..3600000";
    else if (cfg->budget_min_retries > 1000000)
        bad = "budget_min_retries: must be 0..1000000";
    else if (cfg->retry_buffer_bytes > (size_t)1 << 30)
        bad = "retry_buffer_bytes: must be 0..1 GiB";
    else if (cfg->retry_checkpoint_bytes < 64 || cfg->retry_checkpoint_bytes > (size_t)1 << 30)
        bad = "retry_checkpoint_bytes: must be 64..1 GiB";
    if (why)
        *why = bad;
    return bad ? RETRY_EINVAL : RETRY_OK;
}

void breaker_config_defaults(struct breaker_config *cfg)
{
    cfg->failure_rate_pct = 50;
    cfg->min_requests = 20;
    cfg->window_ms = 10000;
    cfg->consecutive_failures = 5;
    cfg->open_ms = 5000;
    cfg->open_max_ms = 60000;
    cfg->probe_timeout_ms = 1000;
}

enum retry_status breaker_config_check(const struct breaker_config *cfg, const char **why)
{
    const char *bad = NULL;

    if (cfg->failure_rate_pct < 1 || cfg->failure_rate_pct > 100)
        bad = "failure_rate_pct: must be 1..100";
    else if (cfg->min_requests < 1 || cfg->min_requests > 1000000)
        bad = "min_requests: must be 1..1000000";
    else if (cfg->window_ms < 100 || cfg->window_ms > 3600000)
        bad = "window_ms: must be 100..3600000";
    else if (cfg->consecutive_failures > 1000000)
        bad = "consecutive_failures: must be 0..1000000";
    else if (cfg->open_ms < 1 || cfg->open_ms > 3600000)
        bad = "open_ms: must be 1..3600000";
    else if (cfg->open_max_ms < cfg->open_ms || cfg->open_max_ms > 86400000)
        bad = "open_max_ms: must be open_ms..86400000";
    else if (cfg->probe_timeout_ms < 1 || cfg->probe_timeout_ms > 3600000)
        bad = "probe_timeout_ms: must be 1..3600000";
    if (why)
        *why = bad;
    return bad ? RETRY_EINVAL : RETRY_OK;
}
