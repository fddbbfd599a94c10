"""The two streaming transports: Server-Sent Events and WebSocket."""
