/*
 * main.h: process-level operations other modules trigger (the admin port's reload).
 */
#ifndef PGW_PROXY_MAIN_H
#define PGW_PROXY_MAIN_H

/* Re-reads the config file and auth_file and applies what can change without a restart.
 * Returns 0, or -1 with *errmsg (free with free()); the running config stays on error. */
int px_main_reload(char **errmsg);

#endif
