// Preload for the Haraka benchmark variant: sets TCP_NODELAY on every socket Haraka opens or accepts.
// Haraka never sets it, so each forward waits for a delayed ACK (~40 ms) on small writes; BENCHMARKS.md
// reports Haraka both stock and with this, to compare against its best.
const net = require('node:net');
const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
  this.setNoDelay(true);
  return connect.apply(this, args);
};
const emit = net.Server.prototype.emit;
net.Server.prototype.emit = function (event, socket, ...rest) {
  if (event === 'connection' && socket && typeof socket.setNoDelay === 'function') socket.setNoDelay(true);
  return emit.call(this, event, socket, ...rest);
};
