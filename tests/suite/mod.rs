mod cli;
mod control;
mod desktop;
mod files;
mod run;
mod sandbox;
mod tasks;
mod tui;
