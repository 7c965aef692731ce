"""智慧交通 (traffic): signal control with a platform safety layer, controllers and the SUMO harness (this
package), congestion (`congestion/`) and parking (`parking/`) in their own sub-packages."""
