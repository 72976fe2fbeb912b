// windi browser client
