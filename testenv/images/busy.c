/* The workload of the real-node tests: a process that burns CPU until SIGTERM, so that
 * the collector has a container whose CPU use is known to be high. Built statically,
 * it needs nothing else in its image. */
#include <signal.h>

static volatile sig_atomic_t running = 1;

static void stop(int sig) {
  (void)sig;
  running = 0;
}

int main(void) {
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  volatile unsigned long spins = 0;
  while (running) spins++;
  return 0;
}
