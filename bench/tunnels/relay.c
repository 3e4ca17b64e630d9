// relay LISTEN_PORT TARGET_PORT: a minimal TCP relay on 127.0.0.1 (read/write loop, 256 KiB buffer, one process per
// connection). Two of them in a row are the ceiling for any tunnel made of two processes (agent and gateway) on
// loopback: the same extra socket hops, with no framing, masking, flow control or HTTP handling at all. Built and run
// by bench/tunnels/run.sh (variant relay-x2) when a C compiler is available.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static char buf[262144];
static int pump(int from, int to) {
  ssize_t n = read(from, buf, sizeof buf);
  if (n <= 0) return -1;
  for (ssize_t off = 0; off < n;) { ssize_t w = write(to, buf + off, n - off); if (w <= 0) return -1; off += w; }
  return 0;
}
int main(int argc, char **argv) {
  signal(SIGCHLD, SIG_IGN);
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(ls, (void *)&a, sizeof a) || listen(ls, 128)) { perror("listen"); return 1; }
  for (;;) {
    int c = accept(ls, 0, 0);
    if (c < 0) continue;
    if (fork()) { close(c); continue; }
    int t = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in b = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2])), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(t, (void *)&b, sizeof b)) _exit(1);
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); setsockopt(t, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct pollfd p[2] = {{c, POLLIN, 0}, {t, POLLIN, 0}};
    for (;;) {
      if (poll(p, 2, -1) < 0) break;
      if ((p[0].revents & (POLLIN | POLLHUP)) && pump(c, t)) break;
      if ((p[1].revents & (POLLIN | POLLHUP)) && pump(t, c)) break;
    }
    _exit(0);
  }
}
