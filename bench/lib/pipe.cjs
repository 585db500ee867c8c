// The floor for any relay written for Node.js: a TCP proxy that copies bytes both ways and does nothing
// else (no SMTP, no checks), one upstream connection per client connection, TCP_NODELAY on both sides.
// Its CPU per message is what Node's sockets alone cost on this machine.
//
//   node bench/lib/pipe.cjs <listen port> <upstream port>
const net = require('node:net');
const [listen, upstream] = process.argv.slice(2).map(Number);
net
  .createServer((client) => {
    client.setNoDelay(true);
    const up = net.connect({ host: '127.0.0.1', port: upstream });
    up.setNoDelay(true);
    client.pipe(up).pipe(client);
    const close = () => {
      client.destroy();
      up.destroy();
    };
    client.on('error', close);
    up.on('error', close);
  })
  .listen(listen, '127.0.0.1');
