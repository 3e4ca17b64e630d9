// The local server every variant forwards to: /small (13-byte body), /big?mb=N (N MiB streamed in 64 KiB chunks).
const http = require('http');
const port = Number(process.argv[2] || 19000);
const chunk = Buffer.alloc(64 * 1024, 120);
http.createServer((req, res) => {
  if (req.url.startsWith('/big')) {
    const mb = Number(new URL(req.url, 'http://x').searchParams.get('mb') || '1024');
    let left = mb * 16; // 64 KiB chunks
    res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': String(mb * 1024 * 1024) });
    const pump = () => {
      while (left > 0) {
        left--;
        if (!res.write(chunk)) { res.once('drain', pump); return; }
      }
      res.end();
    };
    pump();
    return;
  }
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': '13' });
  res.end('hello, world\n');
}).listen(port, '127.0.0.1');
