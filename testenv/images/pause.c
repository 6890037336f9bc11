/* The pod sandbox ("pause") image of the test environment's real node: it holds a pod's
 * namespaces and does nothing else. No registry can be reached here, so it is built from
 * this file; it sleeps until SIGINT or SIGTERM and reaps orphans, as a sandbox must. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
  (void)sig;
  _exit(0);
}

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  signal(SIGINT, stop);
  signal(SIGTERM, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
