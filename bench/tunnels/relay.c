// relay LISTEN_PORT TARGET_PORT [splice]: a minimal TCP relay on 127.0.0.1, one process per connection. Without
// "splice" it copies (read/write loop, 256 KiB buffer); with it, the target's answer moves to the client with splice(2)
// through a 1 MiB pipe, as Switchboard's gateway and agent move a large body on Linux (requests are still copied). Two
// of them in a row are the ceiling for any tunnel made of two processes (agent and gateway) on loopback: the same
// extra socket hops, with no framing, masking, flow control or HTTP handling at all. Built and run by
// bench/tunnels/run.sh (variants relay-x2 and relay-splice-x2) when a C compiler is available.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
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
static int pipefd[2] = {-1, -1};
static int pump(int from, int to) {
  ssize_t n = read(from, buf, sizeof buf);
  if (n <= 0) return -1;
  for (ssize_t off = 0; off < n;) { ssize_t w = write(to, buf + off, n - off); if (w <= 0) return -1; off += w; }
  return 0;
}
static int splice_pump(int from, int to) {
  ssize_t n = splice(from, 0, pipefd[1], 0, 1 << 20, SPLICE_F_MOVE);
  if (n <= 0) return -1;
  while (n > 0) { ssize_t w = splice(pipefd[0], 0, to, 0, n, SPLICE_F_MOVE); if (w <= 0) return -1; n -= w; }
  return 0;
}
int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: relay LISTEN_PORT TARGET_PORT [splice]\n"); return 2; }
  int use_splice = argc > 3 && strcmp(argv[3], "splice") == 0;
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
    if (use_splice && (pipe(pipefd) || fcntl(pipefd[1], F_SETPIPE_SZ, 1 << 20) < 0)) _exit(1);
    struct pollfd p[2] = {{c, POLLIN, 0}, {t, POLLIN, 0}};
    for (;;) {
      if (poll(p, 2, -1) < 0) break;
      if ((p[0].revents & (POLLIN | POLLHUP)) && pump(c, t)) break;
      if ((p[1].revents & (POLLIN | POLLHUP)) && (use_splice ? splice_pump(t, c) : pump(t, c))) break;
    }
    _exit(0);
  }
}
