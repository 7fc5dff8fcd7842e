"""Starting and stopping the processes of a federation: the local launcher and the split server/party start."""
