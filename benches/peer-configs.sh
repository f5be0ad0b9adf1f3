# shellcheck shell=bash
# peer-configs.sh: the nginx and HAProxy configurations that Vane is measured against
# (benches/peer-bench.sh, ab.sh, instructions.sh): 1 worker / 1 thread, round robin over
# two backends with upstream keep-alive, forwarding headers, Debian's packages as they come
# otherwise. Sourced, not run.

# write_nginx_conf DIR PORT H2PORT BACKEND1 BACKEND2 MASTER(on|off) [ACCESS_LOG(on|off)]:
# DIR/nginx.conf, with HTTP/1.1 on PORT and h2c on H2PORT. MASTER=off keeps the one worker
# in the foreground process (for valgrind). ACCESS_LOG=on logs every request to
# DIR/access.log in nginx's combined format. NGINX_CLIENT_BODY_BUFFER (e.g. 64k) sets
# client_body_buffer_size: nginx's default (16k on x86-64) writes a 16 KiB request body to
# a temporary file, with a warning in err.log, for every request.
write_nginx_conf() {
  local dir=$1 port=$2 h2port=$3 up1=$4 up2=$5 master=$6 alog="access_log off;"
  [ "${7:-off}" = on ] && alog="access_log $dir/access.log combined;"
  [ -n "${NGINX_CLIENT_BODY_BUFFER:-}" ] && alog="$alog client_body_buffer_size $NGINX_CLIENT_BODY_BUFFER;"
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<NG
worker_processes 1; daemon off; master_process $master; user www-data;
pid $dir/nginx.pid; error_log $dir/err.log warn;
events { worker_connections 8192; use epoll; multi_accept on; }
http { $alog sendfile on; tcp_nopush on; tcp_nodelay on; keepalive_timeout 65s; keepalive_requests 100000;
 client_body_temp_path $dir/tmp/b; proxy_temp_path $dir/tmp/p; fastcgi_temp_path $dir/tmp/f;
 uwsgi_temp_path $dir/tmp/u; scgi_temp_path $dir/tmp/s;
 upstream backends { server $up1; server $up2; keepalive 512; keepalive_requests 100000; }
 server { listen 127.0.0.1:$port backlog=4096 reuseport; listen 127.0.0.1:$h2port http2;
  location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host;
   proxy_set_header X-Real-IP \$remote_addr; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
   proxy_set_header X-Forwarded-Proto \$scheme; proxy_buffering on; proxy_buffer_size 16k; proxy_buffers 8 16k; } } }
NG
}

# write_haproxy_cfg FILE PORT H2PORT BACKEND1 BACKEND2: HTTP/1.1 on PORT, h2c on H2PORT.
write_haproxy_cfg() {
  local file=$1 port=$2 h2port=$3 up1=$4 up2=$5
  cat >"$file" <<HA
global
    nbthread 1
    maxconn 8000
    tune.bufsize 16384
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse safe
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 60s
frontend fe_http
    bind 127.0.0.1:$port
    bind 127.0.0.1:$h2port proto h2
    default_backend be_pool
backend be_pool
    balance roundrobin
    server b1 $up1
    server b2 $up2
HA
}
